//! OpenAI request parsing and validation, error JSON, and response bodies.
//!
//! Requests are parsed from a `serde_json::Value` field by field, so every problem is reported
//! as OpenAI does: HTTP 400 with `{"error": {"message", "type": "invalid_request_error",
//! "param", "code"}}` naming the field.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kiln_models::{GenerateOptions, SamplingParams, StopReason};
use serde_json::{Map, Value, json};

/// An error answer: status and OpenAI error object.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: (!param.is_empty()).then(|| param.to_string()),
            code: None,
        }
    }
    /// 404 for a model this server does not serve; the message lists the ones it does.
    pub fn model_not_found(name: &str, served: &[String]) -> ApiError {
        let list: Vec<String> = served.iter().map(|n| format!("'{n}'")).collect();
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model '{name}' does not exist (this server serves {})",
                list.join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }
    /// 503: the model cannot be loaded now (its bytes do not fit next to the models in use).
    pub fn unavailable(message: String) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message,
            kind: "server_error",
            param: Some("model".into()),
            code: Some("model_does_not_fit"),
        }
    }
    pub fn queue_full(message: String) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message,
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }
    pub fn server(message: String) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
            kind: "server_error",
            param: None,
            code: None,
        }
    }
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What both endpoints take besides the prompt.
#[derive(Debug, Clone)]
pub struct Common {
    pub model: Option<String>,
    /// `None`: up to the context.
    pub max_tokens: Option<usize>,
    pub opts: GenerateOptions,
    pub stream: bool,
    pub include_usage: bool,
}

/// The body as a JSON object.
pub fn object(body: &[u8]) -> ApiResult<Map<String, Value>> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::invalid("", "the body must be a JSON object")),
    }
}

fn number(m: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> ApiResult<Option<f64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if (lo..=hi).contains(&x) {
                Ok(Some(x))
            } else {
                Err(ApiError::invalid(
                    key,
                    format!("'{key}' must be between {lo} and {hi}, got {x}"),
                ))
            }
        }
        Some(_) => Err(ApiError::invalid(key, format!("'{key}' must be a number"))),
    }
}

fn integer(m: &Map<String, Value>, key: &str, lo: i64) -> ApiResult<Option<i64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if x >= lo => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                key,
                format!("'{key}' must be an integer ≥ {lo}, got {n}"),
            )),
        },
        Some(_) => Err(ApiError::invalid(
            key,
            format!("'{key}' must be an integer"),
        )),
    }
}

fn boolean(m: &Map<String, Value>, key: &str) -> ApiResult<bool> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(key, format!("'{key}' must be a boolean"))),
    }
}

/// Parameters shared by chat and completions.
pub fn common(m: &Map<String, Value>) -> ApiResult<Common> {
    let model = match m.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("model", "'model' must be a string")),
    };
    let n = integer(m, "n", 1)?.unwrap_or(1);
    if n != 1 {
        return Err(ApiError::invalid(
            "n",
            format!("only n = 1 is supported, got {n}"),
        ));
    }
    let max_tokens = match integer(m, "max_completion_tokens", 1)? {
        Some(x) => Some(x),
        None => integer(m, "max_tokens", 1)?,
    };
    let stop = match m.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let v: Option<Vec<String>> = a.iter().map(|x| x.as_str().map(String::from)).collect();
            match v {
                Some(v) if v.len() <= 4 => v,
                Some(_) => {
                    return Err(ApiError::invalid("stop", "'stop' takes at most 4 strings"));
                }
                None => {
                    return Err(ApiError::invalid(
                        "stop",
                        "'stop' must be a string or a list of strings",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "'stop' must be a string or a list of strings",
            ));
        }
    };
    let seed = match m.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Some(u),
            (None, Some(i)) => Some(i as u64),
            _ => return Err(ApiError::invalid("seed", "'seed' must be an integer")),
        },
        Some(_) => return Err(ApiError::invalid("seed", "'seed' must be an integer")),
    };
    let include_usage = match m.get("stream_options") {
        Some(Value::Object(o)) => boolean(o, "include_usage")?,
        None | Some(Value::Null) => false,
        Some(_) => {
            return Err(ApiError::invalid(
                "stream_options",
                "'stream_options' must be an object",
            ));
        }
    };
    let sampling = SamplingParams {
        temperature: number(m, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_p: number(m, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        top_k: integer(m, "top_k", 0)?.unwrap_or(0) as usize,
        min_p: number(m, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
        presence_penalty: number(m, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        frequency_penalty: number(m, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        seed,
        ..SamplingParams::default()
    };
    if sampling.top_p <= 0.0 && m.contains_key("top_p") {
        return Err(ApiError::invalid("top_p", "'top_p' must be > 0"));
    }
    Ok(Common {
        model,
        max_tokens: max_tokens.map(|x| x as usize),
        opts: GenerateOptions {
            max_tokens: 0,
            sampling,
            stop,
            // llama.cpp's extension: keep going past end-of-generation tokens (benchmarks).
            ignore_eos: boolean(m, "ignore_eos")?,
        },
        stream: boolean(m, "stream")?,
        include_usage,
    })
}

/// Chat messages as the template takes them: `role` and text `content` (a string, or a list
/// of `{"type": "text", "text": ...}` parts, joined).
pub fn messages(m: &Map<String, Value>) -> ApiResult<Vec<Value>> {
    let Some(Value::Array(list)) = m.get("messages") else {
        return Err(ApiError::invalid(
            "messages",
            "'messages' is required: a non-empty list of {role, content}",
        ));
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must not be empty",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, msg) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(o) = msg.as_object() else {
            return Err(ApiError::invalid(&param, "a message must be an object"));
        };
        let role = match o.get("role") {
            Some(Value::String(r))
                if ["system", "user", "assistant", "developer", "tool"].contains(&r.as_str()) =>
            {
                if r == "developer" {
                    "system"
                } else {
                    r.as_str()
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    "'role' must be one of system, developer, user, assistant, tool",
                ));
            }
        };
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(Value::as_str), p.get("text")) {
                        (Some("text"), Some(Value::String(t))) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                &format!("{param}.content"),
                                "only text content parts are supported",
                            ));
                        }
                    }
                }
                s
            }
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.content"),
                    "'content' must be a string or a list of text parts",
                ));
            }
        };
        out.push(json!({"role": role, "content": content}));
    }
    Ok(out)
}

/// The completion prompt: a string, a one-element list of strings, or a list of token ids.
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

pub fn prompt(m: &Map<String, Value>) -> ApiResult<Prompt> {
    let bad = || {
        ApiError::invalid(
            "prompt",
            "'prompt' must be a string, a list of one string, or a list of token ids",
        )
    };
    match m.get("prompt") {
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(Prompt::Text(a[0].as_str().unwrap_or_default().to_string()))
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => Ok(Prompt::Ids(
            a.iter()
                .map(|x| x.as_u64().unwrap_or(u64::MAX).min(u32::MAX as u64) as u32)
                .collect(),
        )),
        None => Err(ApiError::invalid("prompt", "'prompt' is required")),
        _ => Err(bad()),
    }
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(r: &StopReason) -> &'static str {
    match r {
        StopReason::Eos | StopReason::Stop(_) => "stop",
        StopReason::MaxTokens | StopReason::Context => "length",
    }
}

pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}
