//! `ibid serve-index`: the n-gram query API over HTTP, shaped like infini-gram's so its clients
//! work. JSON in, JSON out; every error is a JSON body with a 4xx/5xx status, and the server stays up.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::error::Error;
use crate::index::Stop;
use crate::query_engine::QueryEngine;

#[derive(Debug, Clone)]
pub struct QueryServerOptions {
    pub addr: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// A query still running after this long is stopped and answered with 503.
    pub timeout: Duration,
    /// Queries computed at once; the rest wait their turn.
    pub concurrency: usize,
    /// Raised when the server begins to shut down: queries in flight stop at their next check
    /// instead of holding the shutdown up until their deadline.
    pub stopping: Arc<AtomicBool>,
}

impl Default for QueryServerOptions {
    fn default() -> Self {
        QueryServerOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
            max_body_bytes: 1 << 20,
            timeout: Duration::from_secs(30),
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            stopping: Arc::default(),
        }
    }
}

struct AppState {
    engine: Arc<QueryEngine>,
    permits: Arc<Semaphore>,
    timeout: Duration,
    stopping: Arc<AtomicBool>,
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

async fn query(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    // The permit moves into the computing thread and is released when the computation really
    // ends, so queries given up by the client or the timer can never pile up threads beyond it.
    let Ok(permit) = state.permits.clone().acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down");
    };
    let engine = state.engine.clone();
    let stop = Stop::at(Instant::now() + state.timeout).or_when(state.stopping.clone());
    let work = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let text = std::str::from_utf8(&body).map_err(|_| Error::Query("the request body is not UTF-8".into()))?;
        engine.answer_json_until(text, &stop)
    });
    // The query checks its deadline itself; the timer here only covers a check that comes late.
    match tokio::time::timeout(state.timeout + Duration::from_secs(1), work).await {
        Ok(Ok(Ok(answer))) => Json(answer).into_response(),
        Ok(Ok(Err(e))) => error_response(&e),
        Ok(Err(join)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the query failed: {join}")),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, format!("the query took longer than {:?}", state.timeout)),
    }
}

/// The status for a query's error: the caller's fault (400), given up (503), or ours (500).
fn error_response(e: &Error) -> Response {
    let status = match e {
        Error::Query(_) => StatusCode::BAD_REQUEST,
        Error::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    let index = &state.engine.index;
    Json(json!({
        "index": index.dir,
        "token_width": index.width,
        "documents": index.documents(),
        "tokens": index.tokens(),
        "shards": index.shards.len(),
        "eos_token_id": index.eos_token_id,
        "tokenizer": index.manifest.as_ref().map(|m| &m.tokenizer),
    }))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route: POST / (or /query) with a JSON query, GET /health, GET /info")
}

/// A route that exists, asked with a method it does not take: a JSON body like every other error
/// (axum's own 405 has none).
async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method (queries are POSTed; /health and /info are GETs)")
}

/// The query routes alone (`POST /`, `POST /query`, `GET /info`), to mount in a larger server.
pub fn routes(engine: Arc<QueryEngine>, options: &QueryServerOptions) -> Router {
    let state = Arc::new(AppState {
        engine,
        permits: Arc::new(Semaphore::new(options.concurrency.max(1))),
        timeout: options.timeout,
        stopping: options.stopping.clone(),
    });
    Router::new().route("/", post(query)).route("/query", post(query)).route("/info", get(info)).with_state(state)
}

/// The routes, for embedding in another server or for tests.
pub fn router(engine: Arc<QueryEngine>, options: &QueryServerOptions) -> Router {
    routes(engine, options)
        .route("/health", get(health))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
}

/// Serve until `shutdown` resolves; requests in flight are finished first.
pub async fn serve(
    engine: Arc<QueryEngine>,
    listener: tokio::net::TcpListener,
    options: &QueryServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine, options))
        .with_graceful_shutdown(super::shutdown::raising(options.stopping.clone(), shutdown))
        .await
}
