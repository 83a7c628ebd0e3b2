//! The HTTP handlers: /v1/chat/completions, /v1/completions (JSON or SSE), /v1/models, /health.
//!
//! A request's `model` names one of the served models (none: the first); the handler takes a
//! lease on it from the registry (loading it, and evicting idle models, when needed: on a
//! blocking thread) and holds the lease until its answer is complete, so a model is never
//! evicted under a running request. Unknown model: 404 listing the names; a model that cannot
//! get its bytes even after evicting every idle one: 503.
//!
//! Each request is submitted to its model's engine with a sink over a tokio channel. A streaming
//! response forwards events as OpenAI chunks; when the client goes away the response stream
//! is dropped, the channel closes, and the engine cancels the request at its next step
//! (freeing its blocks). The same holds for a non-streaming request whose connection closes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use kiln_models::ModelError;
use kiln_models::chat::ChatTemplate;
use kiln_models::engine::{Event, EventSink, FinishReason, Lease, Registry, Served};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::openai::{self, ApiError, ApiResult, Common, Prompt};

/// What every handler shares.
pub struct AppState {
    /// The served models by name (each also answers to its MODEL argument, an alias).
    pub registry: Registry<Served>,
    /// The model of requests without `model`: the first MODEL.
    pub default: String,
    pub created: u64,
    pub next_id: AtomicU64,
}

type Shared = State<Arc<AppState>>;

/// Engine events into a tokio channel; closed when the HTTP side dropped its receiver.
struct TokioSink(UnboundedSender<Event>);

impl EventSink for TokioSink {
    fn send(&mut self, ev: Event) -> bool {
        self.0.send(ev).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Engine state summed over the loaded models (one model: exactly its engine's), plus each
/// model's registry state and the byte budget.
pub async fn health(State(s): Shared) -> Json<Value> {
    let mut sum = kiln_models::engine::EngineStats::default();
    let mut models = Vec::new();
    for m in s.registry.status() {
        let st = s.registry.inspect(&m.name, |v| v.engine.stats());
        if let Some(st) = st {
            sum.running += st.running;
            sum.waiting += st.waiting;
            sum.steps += st.steps;
            sum.finished += st.finished;
            sum.cancelled += st.cancelled;
            sum.errors += st.errors;
            sum.preemptions += st.preemptions;
            sum.prefix_hit_blocks += st.prefix_hit_blocks;
            sum.generated_tokens += st.generated_tokens;
            sum.blocks.total += st.blocks.total;
            sum.blocks.free += st.blocks.free;
            sum.blocks.cached += st.blocks.cached;
            sum.blocks.in_use += st.blocks.in_use;
        }
        models.push(json!({
            "name": m.name,
            "state": m.state.name(),
            "busy": m.busy,
            "bytes": m.footprint.as_ref().map(|f| f.total()),
            "loads": m.loads,
            "evictions": m.evictions,
            "running": st.map(|x| x.running),
            "waiting": st.map(|x| x.waiting),
        }));
    }
    let used = s.registry.used();
    let budget: serde_json::Map<String, Value> = s
        .registry
        .budget()
        .iter()
        .map(|(d, b)| {
            let u = used.get(d).copied().unwrap_or(0);
            (d.to_string(), json!({"budget": b, "used": u}))
        })
        .collect();
    Json(json!({
        "status": "ok",
        "model": s.default,
        "running": sum.running,
        "waiting": sum.waiting,
        "steps": sum.steps,
        "finished": sum.finished,
        "cancelled": sum.cancelled,
        "errors": sum.errors,
        "preemptions": sum.preemptions,
        "prefix_hit_blocks": sum.prefix_hit_blocks,
        "generated_tokens": sum.generated_tokens,
        "blocks": {
            "total": sum.blocks.total,
            "free": sum.blocks.free,
            "cached": sum.blocks.cached,
            "in_use": sum.blocks.in_use,
        },
        "models": models,
        "budget": budget,
    }))
}

/// Every served model; `context_length` for the loaded ones.
pub async fn models(State(s): Shared) -> Json<Value> {
    let data: Vec<Value> = s
        .registry
        .status()
        .into_iter()
        .map(|m| {
            let mut o = json!({
                "id": m.name,
                "object": "model",
                "created": s.created,
                "owned_by": "kiln",
                "status": m.state.name(),
            });
            // Only a ready model has an engine (and its context) to report.
            if let Some(ctx) = s.registry.inspect(&m.name, |v| v.engine.context()) {
                o["context_length"] = ctx.into();
            }
            o
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn chat(State(s): Shared, body: Bytes) -> Response {
    let parsed = || -> ApiResult<(String, Vec<Value>, Common)> {
        let m = openai::object(&body)?;
        let c = openai::common(&m)?;
        let name = model_name(&s, &c)?;
        Ok((name, openai::messages(&m)?, c))
    };
    let (name, msgs, c) = match parsed() {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let lease = match lease(&s, name).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let encode = || -> ApiResult<Vec<u32>> {
        let chatml;
        let tpl = match lease.model.chat_template() {
            Some(t) => t,
            None => {
                chatml = ChatTemplate::chatml().map_err(|e| ApiError::server(e.to_string()))?;
                &chatml
            }
        };
        tpl.encode_prompt(lease.model.tokenizer(), &msgs, true)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))
    };
    match encode() {
        Ok(ids) => respond(&s, lease, ids, c, Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

pub async fn completions(State(s): Shared, body: Bytes) -> Response {
    let parsed = || -> ApiResult<(String, Prompt, Common)> {
        let m = openai::object(&body)?;
        let c = openai::common(&m)?;
        let name = model_name(&s, &c)?;
        Ok((name, openai::prompt(&m)?, c))
    };
    let (name, prompt, c) = match parsed() {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let lease = match lease(&s, name).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let ids = match prompt {
        Prompt::Text(t) => match lease.model.tokenizer().encode_prompt(&t) {
            Ok(ids) => ids,
            Err(e) => return ApiError::invalid("prompt", e.to_string()).into_response(),
        },
        Prompt::Ids(ids) => ids,
    };
    respond(&s, lease, ids, c, Kind::Completion).await
}

/// The served model a request names (its `model`, else the default); 404 when unknown.
fn model_name(s: &AppState, c: &Common) -> ApiResult<String> {
    let name = c.model.as_deref().unwrap_or(&s.default);
    match s.registry.spec(name) {
        Some(spec) => Ok(spec.name),
        None => Err(ApiError::model_not_found(name, &s.registry.names())),
    }
}

/// A lease on `name`, loading it on a blocking thread when needed.
async fn lease(s: &Arc<AppState>, name: String) -> ApiResult<Lease<Served>> {
    let reg = s.registry.clone();
    tokio::task::spawn_blocking(move || reg.acquire(&name))
        .await
        .map_err(|e| ApiError::server(format!("loading the model: {e}")))?
        .map_err(|e| match e {
            ModelError::UnknownModel { name, .. } => {
                ApiError::model_not_found(&name, &s.registry.names())
            }
            e @ ModelError::NoRoom { .. } => ApiError::unavailable(e.to_string()),
            e => ApiError::server(format!("loading the model: {e}")),
        })
}

/// Submit and answer: one JSON body, or an SSE stream of chunks.
async fn respond(
    s: &Arc<AppState>,
    lease: Lease<Served>,
    ids: Vec<u32>,
    mut c: Common,
    kind: Kind,
) -> Response {
    let param = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    let context = lease.engine.context();
    c.opts.max_tokens = c
        .max_tokens
        .unwrap_or(context.saturating_sub(ids.len()).max(1));
    let (tx, rx) = unbounded_channel();
    if let Err(e) = lease
        .engine
        .submit_with(ids, c.opts.clone(), Box::new(TokioSink(tx)))
    {
        return match e {
            ModelError::QueueFull { .. } => ApiError::queue_full(e.to_string()),
            e => ApiError::invalid(param, e.to_string()),
        }
        .into_response();
    }
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Chat => format!("chatcmpl-kiln-{n}"),
        Kind::Completion => format!("cmpl-kiln-{n}"),
    };
    let meta = Meta {
        id,
        created: now(),
        model: lease.name().to_string(),
        kind,
    };
    if c.stream {
        sse(meta, rx, c.include_usage, lease).into_response()
    } else {
        whole(meta, rx, lease).await
    }
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }
    /// One choice of a chunk: text so far (`delta` for chat), finish reason or null.
    fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }
}

/// Collect the whole answer (the lease is held until it is complete).
async fn whole(meta: Meta, mut rx: UnboundedReceiver<Event>, _lease: Lease<Served>) -> Response {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token(t) => text.push_str(&t.text),
            Event::Finished(f) => {
                let reason = match &f.reason {
                    FinishReason::Stop(r) => openai::finish_reason(r),
                    FinishReason::Cancelled => {
                        return ApiError::server(
                            "the request was cancelled (server shutdown)".into(),
                        )
                        .into_response();
                    }
                    FinishReason::Error(e) => return ApiError::server(e.clone()).into_response(),
                };
                let choice = match meta.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": reason,
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": null,
                        "finish_reason": reason,
                    }),
                };
                return Json(json!({
                    "id": meta.id,
                    "object": meta.object(false),
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [choice],
                    "usage": openai::usage(f.prompt_tokens, f.completion_tokens),
                }))
                .into_response();
            }
        }
    }
    ApiError::server("the engine stopped before the request finished".into()).into_response()
}

/// Stream state of an SSE answer.
struct Streaming {
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    first: bool,
    include_usage: bool,
    /// Chunks ready to send (the end sends several).
    queue: std::collections::VecDeque<String>,
    done: bool,
    /// Held while the stream lives (a dropped stream is a disconnected client).
    _lease: Lease<Served>,
}

fn sse(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
    lease: Lease<Served>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let st = Streaming {
        meta,
        rx,
        first: true,
        include_usage,
        queue: Default::default(),
        done: false,
        _lease: lease,
    };
    let s = stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.queue.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Token(t)) => {
                    if !t.text.is_empty() || st.first {
                        let c = st.meta.chunk(Some(&t.text), st.first, None);
                        st.first = false;
                        st.queue.push_back(c.to_string());
                    }
                }
                Some(Event::Finished(f)) => {
                    st.done = true;
                    match &f.reason {
                        FinishReason::Stop(r) => {
                            let c = st
                                .meta
                                .chunk(None, st.first, Some(openai::finish_reason(r)));
                            st.queue.push_back(c.to_string());
                            if st.include_usage {
                                let mut u = st.meta.chunk(None, false, None);
                                u["choices"] = json!([]);
                                u["usage"] = openai::usage(f.prompt_tokens, f.completion_tokens);
                                st.queue.push_back(u.to_string());
                            }
                        }
                        FinishReason::Cancelled => {}
                        FinishReason::Error(e) => {
                            st.queue
                                .push_back(ApiError::server(e.clone()).body().to_string());
                        }
                    }
                    st.queue.push_back("[DONE]".into());
                }
                None => {
                    st.done = true;
                    st.queue.push_back("[DONE]".into());
                }
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}

/// 404 in OpenAI's shape for unknown paths.
pub async fn not_found() -> Response {
    let mut e = ApiError::invalid("", "unknown endpoint");
    e.status = axum::http::StatusCode::NOT_FOUND;
    e.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_chunks_have_openai_shape() {
        let m = Meta {
            id: "x".into(),
            created: 1,
            model: "m".into(),
            kind: Kind::Chat,
        };
        let c = m.chunk(Some("hi"), true, None);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(c["choices"][0]["delta"]["content"], "hi");
        assert!(c["choices"][0]["finish_reason"].is_null());
        let c = m.chunk(None, false, Some("stop"));
        assert_eq!(c["choices"][0]["delta"], json!({}));
    }
}
