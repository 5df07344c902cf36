//! `POST /v1/completions` and `POST /v1/chat/completions`, shaped like OpenAI's API (as
//! llama.cpp's server also follows it): requests are checked field by field, every error is a 4xx
//! or 5xx with an OpenAI-style JSON error body, and `stream: true` answers with server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::worker::{Event, Finish, Job, JobError, JobErrorKind};
use super::AppState;
use crate::engine::GenerateOptions;
use crate::verify::SamplingParams;

/// An OpenAI-style error.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let kind = match status.as_u16() {
        400..=499 => "invalid_request_error",
        503 => "server_busy",
        _ => "server_error",
    };
    (status, Json(json!({"error": {"message": message.to_string(), "type": kind, "param": null, "code": null}}))).into_response()
}

/// The status a failed job is answered with: the one place a job error's kind becomes HTTP.
fn job_status(e: &JobError) -> StatusCode {
    match e.kind {
        JobErrorKind::TimedOut => StatusCode::SERVICE_UNAVAILABLE,
        JobErrorKind::Rejected => StatusCode::BAD_REQUEST,
        JobErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn bad(message: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields both endpoints share. (Unknown fields are refused by [`parse`]: serde cannot deny them
/// through `flatten`.)
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// llama.cpp's extension.
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<StopInput>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    /// Accepted (OpenAI clients send it) and checked for type; not used.
    #[allow(dead_code)]
    pub user: Option<String>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

const COMMON_FIELDS: &[&str] = &[
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    "presence_penalty",
    "frequency_penalty",
];

/// The body as `T`, refusing fields that are neither `T`'s own nor the shared ones. Any content
/// type is read as JSON, as llama.cpp's server does.
fn parse<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>, own: &[&str]) -> Result<T, Response> {
    let body = body.map_err(|rejection| error(rejection.status(), rejection.body_text()))?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else { return Err(bad("the request body must be a JSON object")) };
    if let Some(unknown) = object.keys().find(|k| !own.contains(&k.as_str()) && !COMMON_FIELDS.contains(&k.as_str())) {
        return Err(bad(format!("unknown field {unknown:?}")));
    }
    serde_json::from_value(value).map_err(|e| bad(format!("invalid request: {e}")))
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
    /// Accepted (OpenAI clients send it) and checked for type; not used.
    #[allow(dead_code)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    pub max_completion_tokens: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// A request checked and turned into a job's parameters.
pub struct Checked {
    pub options: GenerateOptions,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Check the shared fields: types were checked by serde, ranges here.
pub fn check_common(c: &Common, max_tokens: Option<i64>, n_ctx: usize) -> Result<Checked, Response> {
    let max_tokens = match max_tokens.or(c.max_tokens) {
        None => 256.min(n_ctx),
        Some(m) if m >= 1 && (m as u64) < n_ctx as u64 => m as usize,
        Some(m) => return Err(bad(format!("max_tokens must be between 1 and {}, not {m}", n_ctx - 1))),
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(bad(format!("temperature must be between 0 and 2, not {temperature}")));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad(format!("top_p must be in (0, 1], not {top_p}")));
    }
    let top_k = match c.top_k {
        None => 0,
        Some(k) if k >= 0 => k as usize,
        Some(k) => return Err(bad(format!("top_k must be 0 (off) or positive, not {k}"))),
    };
    let seed = match c.seed {
        None => rand::random(),
        Some(s) if s >= 0 => s as u64,
        Some(s) => return Err(bad(format!("seed must not be negative, not {s}"))),
    };
    if let Some(n) = c.n {
        if n != 1 {
            return Err(bad(format!("n must be 1 (one choice per request), not {n}")));
        }
    }
    for (name, v) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(bad(format!("{name} is not supported (penalties would change the model's distribution)")));
        }
    }
    let stop = match &c.stop {
        None => Vec::new(),
        Some(StopInput::One(s)) => vec![s.clone()],
        Some(StopInput::Many(v)) => v.clone(),
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(bad("stop takes at most 4 non-empty strings of at most 256 bytes"));
    }
    let sampling = SamplingParams { temperature: temperature as f32, top_k, top_p: top_p as f32, seed };
    sampling.validate().map_err(bad)?;
    let options = GenerateOptions { max_tokens, sampling, budget: crate::draft::MAX_AUTO_BUDGET, stop_at_eog: true };
    let stream = c.stream.unwrap_or(false);
    let include_usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if c.stream_options.is_some() && !stream {
        return Err(bad("stream_options needs stream: true"));
    }
    Ok(Checked { options, stop, stream, include_usage })
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Which endpoint an answer is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length | Finish::Timeout => "length",
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// Queue the job and answer, streaming or whole.
async fn run(state: Arc<AppState>, prompt: Vec<u32>, checked: Checked, kind: Kind, model_name: String) -> Response {
    if prompt.is_empty() {
        return bad("the prompt is empty");
    }
    let n_vocab = state.model.n_vocab() as u32;
    if let Some(t) = prompt.iter().find(|&&t| t >= n_vocab) {
        return bad(format!("token {t} is outside the model's vocabulary of {n_vocab}"));
    }
    let room = state.n_ctx.saturating_sub(prompt.len() + 2);
    if checked.options.max_tokens > room {
        return bad(format!(
            "the prompt has {} tokens; with max_tokens {} that is more than the context of {} tokens",
            prompt.len(),
            checked.options.max_tokens,
            state.n_ctx
        ));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let deadline = Instant::now() + state.timeout;
    let job = Job { prompt, options: checked.options, stop: checked.stop, deadline, events: tx };
    match state.queue.submit(job) {
        Ok(()) => {}
        Err(super::worker::Refused::Full) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the server is busy: the generation queue is full; retry later")
        }
        Err(super::worker::Refused::Stopped) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the generation worker has stopped; restart the server")
        }
    }
    let (id, object) = match kind {
        Kind::Completion => (request_id("cmpl"), "text_completion"),
        Kind::Chat => (request_id("chatcmpl"), "chat.completion"),
    };
    let created = now();
    if !checked.stream {
        let mut text = String::new();
        let wait = tokio::time::timeout(state.timeout + Duration::from_secs(5), async {
            while let Some(ev) = rx.recv().await {
                match ev {
                    Event::Text(t) => text.push_str(&t),
                    Event::Done { finish, prompt_tokens, completion_tokens } => return Ok((finish, prompt_tokens, completion_tokens)),
                    Event::Failed(e) => return Err(e),
                }
            }
            Err(JobError::new(JobErrorKind::Failed, "the generation stopped without an answer"))
        })
        .await;
        return match wait {
            Ok(Ok((finish, p, c))) => {
                let choice = match kind {
                    Kind::Completion => json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(finish)}),
                    Kind::Chat => {
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish_reason(finish)})
                    }
                };
                Json(
                    json!({"id": id, "object": object, "created": created, "model": model_name, "choices": [choice], "usage": usage(p, c)}),
                )
                .into_response()
            }
            Ok(Err(e)) => error(job_status(&e), e),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the request timed out"),
        };
    }
    let chunk_object = match kind {
        Kind::Completion => "text_completion",
        Kind::Chat => "chat.completion.chunk",
    };
    let include_usage = checked.include_usage;
    let chunk = move |choice: Value, usage: Option<Value>| -> SseEvent {
        let mut body = json!({"id": id, "object": chunk_object, "created": created, "model": model_name, "choices": choice});
        if let Some(u) = usage {
            body["usage"] = u;
        }
        SseEvent::default().data(body.to_string())
    };
    // States: 0 = first (chat: the role), 1 = text, 2 = usage / [DONE] pending, 3 = over.
    let stream = futures_util::stream::unfold((rx, 0u8, None::<Value>), move |(mut rx, phase, pending_usage)| {
        let chunk = chunk.clone();
        async move {
            match phase {
                0 if kind == Kind::Chat => {
                    let ev = chunk(
                        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                        None,
                    );
                    Some((Ok::<_, Infallible>(ev), (rx, 1, None)))
                }
                0 | 1 => match rx.recv().await {
                    Some(Event::Text(t)) => {
                        let choice = match kind {
                            Kind::Completion => json!([{"index": 0, "text": t, "logprobs": null, "finish_reason": null}]),
                            Kind::Chat => json!([{"index": 0, "delta": {"content": t}, "logprobs": null, "finish_reason": null}]),
                        };
                        Some((Ok(chunk(choice, None)), (rx, 1, None)))
                    }
                    Some(Event::Done { finish, prompt_tokens, completion_tokens }) => {
                        let reason = finish_reason(finish);
                        let choice = match kind {
                            Kind::Completion => json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": reason}]),
                            Kind::Chat => json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}]),
                        };
                        let u = include_usage.then(|| usage(prompt_tokens, completion_tokens));
                        Some((Ok(chunk(choice, None)), (rx, 2, u)))
                    }
                    Some(Event::Failed(e)) => {
                        let body = json!({"error": {"message": e.message, "type": "server_error", "param": null, "code": null}});
                        Some((Ok(SseEvent::default().data(body.to_string())), (rx, 3, None)))
                    }
                    None => None,
                },
                2 => match pending_usage {
                    Some(u) => Some((Ok(chunk(json!([]), Some(u))), (rx, 2, None))),
                    None => Some((Ok(SseEvent::default().data("[DONE]")), (rx, 3, None))),
                },
                _ => None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

pub async fn completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: CompletionRequest = match parse(body, &["prompt"]) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let checked = match check_common(&req.common, None, state.n_ctx) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let prompt = match req.prompt {
        // an empty list is an empty prompt, as "" is (the model's BOS alone)
        PromptInput::Texts(v) if v.is_empty() => state.model.tokenize_prompt(""),
        PromptInput::Tokens(ids) if ids.is_empty() => state.model.tokenize_prompt(""),
        PromptInput::Text(t) => state.model.tokenize_prompt(&t),
        PromptInput::Texts(v) if v.len() == 1 => state.model.tokenize_prompt(&v[0]),
        PromptInput::Texts(v) => return bad(format!("one prompt per request, not {}", v.len())),
        PromptInput::Tokens(ids) => ids,
    };
    let name = req.common.model.clone().unwrap_or_else(|| state.model_name.clone());
    run(state, prompt, checked, Kind::Completion, name).await
}

pub async fn chat_completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let req: ChatRequest = match parse(body, &["messages", "max_completion_tokens"]) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let checked = match check_common(&req.common, req.max_completion_tokens, state.n_ctx) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    if req.messages.is_empty() {
        return bad("messages is empty");
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        if !["system", "user", "assistant", "developer"].contains(&m.role.as_str()) {
            return bad(format!("unknown role {:?}: use system, user or assistant", m.role));
        }
        let content = match &m.content {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => return bad(format!("content parts of type {kind:?} are not supported (text only)")),
                    }
                }
                text
            }
        };
        let role = if m.role == "developer" { "system".to_string() } else { m.role.clone() };
        messages.push((role, content));
    }
    let model = state.model.clone();
    let rendered = match tokio::task::spawn_blocking(move || model.render_chat(&messages)).await {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => return bad(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    // Templates write BOS themselves; do not add a second one.
    let mut prompt = state.model.tokenize_prompt(&rendered);
    let bos = state.model.tokenize_prompt("");
    if bos.len() == 1 && prompt.len() >= 2 && prompt[0] == bos[0] && prompt[1] == bos[0] {
        prompt.remove(0);
    }
    let name = req.common.model.clone().unwrap_or_else(|| state.model_name.clone());
    run(state, prompt, checked, Kind::Chat, name).await
}
