//! `ibid serve`: OpenAI-compatible completions with lossless drafting, the n-gram query API of the
//! index on the same port, `GET /health` and `GET /metrics`. Generation runs on one worker
//! thread fed by a bounded queue (first come, first served) that generates several requests at
//! once, one verification batch for all; HTTP runs on tokio.

mod metrics;
mod openai;
pub mod query_routes;
pub mod shutdown;
mod worker;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use ibid_generate::model::Model;
use ibid_index::query_engine::QueryEngine;

// The modules of the other crates under the names the code here uses.
use ibid_generate::{draft, engine, model, verify};
use ibid_index::Result;
use ibid_index::{error, index, query_engine};
pub use metrics::Metrics;
pub use worker::{spawn as spawn_worker, Event, Finish, Job, JobError, JobErrorKind, Queue, WorkerConfig, FAULT_PANIC_AT_STEP};

pub struct AppState {
    pub model: Arc<Model>,
    pub model_name: String,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub n_ctx: usize,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ModelServerOptions {
    pub max_body_bytes: usize,
    /// Queue wait plus generation; past it a generation stops.
    pub timeout: Duration,
    /// Raised when the server begins to shut down (see [`crate::shutdown::raising`]): index queries
    /// in flight stop at once.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for ModelServerOptions {
    fn default() -> Self {
        ModelServerOptions { max_body_bytes: 1 << 20, timeout: Duration::from_secs(300), stopping: Arc::default() }
    }
}

/// Ok only while the generation worker takes jobs.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let queued = state.queue.waiting.load(Ordering::Relaxed);
    if state.queue.is_alive() {
        Json(json!({"status": "ok", "queued": queued})).into_response()
    } else {
        let body = json!({"status": "error", "error": "the generation worker has stopped", "queued": queued});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(state.queue.waiting.load(Ordering::Relaxed));
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0, "owned_by": "ibid"}]})).into_response()
}

async fn not_found() -> Response {
    openai::error(
        StatusCode::NOT_FOUND,
        "no such route: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics, \
         and with an index POST / (n-gram queries), GET /info",
    )
}

/// A route asked with a method it does not take: an OpenAI-shaped error body (axum's has none).
async fn method_not_allowed() -> Response {
    openai::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method (completions are POSTed; /health, /metrics and /v1/models are GETs)",
    )
}

/// Count every request by route and status.
async fn count_requests(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    state.metrics.requests.with_label_values(&[&route, status.as_str()]).inc();
    tracing::info!(route, status = status.as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    response
}

/// Every route, with body limits and request counting.
pub fn router(state: Arc<AppState>, engine: Option<Arc<QueryEngine>>, options: &ModelServerOptions) -> Router {
    let mut app = Router::new()
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .with_state(state.clone());
    if let Some(engine) = engine {
        let query_options = crate::query_routes::QueryServerOptions {
            timeout: options.timeout.min(Duration::from_secs(30)),
            stopping: options.stopping.clone(),
            ..Default::default()
        };
        app = app.merge(crate::query_routes::routes(engine, &query_options));
    }
    app.method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state, count_requests))
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
}

/// Serve until `shutdown` resolves; requests in flight finish first.
pub async fn serve(
    app: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
