//! The HTTP handlers: /v1/chat/completions, /v1/completions (JSON or SSE), /v1/models, /health.
//!
//! Each request is submitted to the engine with a sink over a tokio channel. A streaming
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
use kiln_models::engine::{Engine, Event, EventSink, FinishReason};
use kiln_models::runtime::Model;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::openai::{self, ApiError, ApiResult, Common, Prompt};

/// What every handler shares.
pub struct AppState {
    pub engine: Engine,
    pub model: Arc<Model>,
    /// The name clients pass as `model` (also accepted: `alias`, the MODEL argument).
    pub served: String,
    pub alias: String,
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

pub async fn health(State(s): Shared) -> Json<Value> {
    let st = s.engine.stats();
    Json(json!({
        "status": "ok",
        "model": s.served,
        "running": st.running,
        "waiting": st.waiting,
        "steps": st.steps,
        "finished": st.finished,
        "cancelled": st.cancelled,
        "errors": st.errors,
        "preemptions": st.preemptions,
        "prefix_hit_blocks": st.prefix_hit_blocks,
        "generated_tokens": st.generated_tokens,
        "blocks": {
            "total": st.blocks.total,
            "free": st.blocks.free,
            "cached": st.blocks.cached,
            "in_use": st.blocks.in_use,
        },
    }))
}

pub async fn models(State(s): Shared) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.served,
            "object": "model",
            "created": s.created,
            "owned_by": "kiln",
            "context_length": s.engine.context(),
        }],
    }))
}

pub async fn chat(State(s): Shared, body: Bytes) -> Response {
    let run = || -> ApiResult<(Vec<u32>, Common)> {
        let m = openai::object(&body)?;
        let c = openai::common(&m)?;
        check_model(&s, &c)?;
        let msgs = openai::messages(&m)?;
        let chatml;
        let tpl = match s.model.chat_template() {
            Some(t) => t,
            None => {
                chatml = ChatTemplate::chatml().map_err(|e| ApiError::server(e.to_string()))?;
                &chatml
            }
        };
        let ids = tpl
            .encode_prompt(s.model.tokenizer(), &msgs, true)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        Ok((ids, c))
    };
    match run() {
        Ok((ids, c)) => respond(&s, ids, c, Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

pub async fn completions(State(s): Shared, body: Bytes) -> Response {
    let run = || -> ApiResult<(Vec<u32>, Common)> {
        let m = openai::object(&body)?;
        let c = openai::common(&m)?;
        check_model(&s, &c)?;
        let ids = match openai::prompt(&m)? {
            Prompt::Text(t) => s
                .model
                .tokenizer()
                .encode_prompt(&t)
                .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
            Prompt::Ids(ids) => ids,
        };
        Ok((ids, c))
    };
    match run() {
        Ok((ids, c)) => respond(&s, ids, c, Kind::Completion).await,
        Err(e) => e.into_response(),
    }
}

fn check_model(s: &AppState, c: &Common) -> ApiResult<()> {
    match &c.model {
        Some(m) if m != &s.served && m != &s.alias => Err(ApiError::model_not_found(m, &s.served)),
        _ => Ok(()),
    }
}

/// Submit and answer: one JSON body, or an SSE stream of chunks.
async fn respond(s: &Arc<AppState>, ids: Vec<u32>, mut c: Common, kind: Kind) -> Response {
    let param = if kind == Kind::Chat {
        "messages"
    } else {
        "prompt"
    };
    let context = s.engine.context();
    c.opts.max_tokens = c
        .max_tokens
        .unwrap_or(context.saturating_sub(ids.len()).max(1));
    let (tx, rx) = unbounded_channel();
    if let Err(e) = s
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
        model: s.served.clone(),
        kind,
    };
    if c.stream {
        sse(meta, rx, c.include_usage).into_response()
    } else {
        whole(meta, rx).await
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

/// Collect the whole answer.
async fn whole(meta: Meta, mut rx: UnboundedReceiver<Event>) -> Response {
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
}

fn sse(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let st = Streaming {
        meta,
        rx,
        first: true,
        include_usage,
        queue: Default::default(),
        done: false,
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
