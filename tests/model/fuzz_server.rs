//! The model server's routes under random and hostile requests (`tests/fuzz` has the index's):
//! the real Gemma tokenizer and chat template, the generation worker replaced by one that answers
//! every job at once (what is fuzzed is the HTTP layer and request checking).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibid::server::{Event, Finish};
use proptest::prelude::*;

use crate::common::*;
use crate::fuzz_requests::*;

/// A stand-in for the generation worker: every job is answered at once with one piece of text.
fn answering_worker(mut jobs: tokio::sync::mpsc::Receiver<ibid::server::Job>, waiting: Arc<std::sync::atomic::AtomicU64>) {
    std::thread::spawn(move || {
        while let Some(job) = jobs.blocking_recv() {
            waiting.fetch_sub(1, Ordering::Relaxed);
            let _ = job.events.send(Event::Text("x".into()));
            let _ = job.events.send(Event::Done { finish: Finish::Length, prompt_tokens: job.prompt.len(), completion_tokens: 1 });
        }
    });
}

/// `serve`'s routes (the model's own tokenizer and chat template), with the index routes mounted.
#[test]
fn fuzz_model_server() {
    let rt = runtime();
    let _one = one_model_at_a_time();
    let model = shared_model();
    let (queue, jobs) = ibid::server::Queue::new(64);
    answering_worker(jobs, queue.waiting.clone());
    let metrics = Arc::new(ibid::server::Metrics::new());
    let options = ibid::server::ModelServerOptions { max_body_bytes: 16 << 10, timeout: Duration::from_secs(5), ..Default::default() };
    let state =
        Arc::new(ibid::server::AppState { model, model_name: "gemma".into(), queue, metrics, n_ctx: 512, timeout: options.timeout });
    let app = ibid::server::router(state, Some(engine()), &options);
    let slowest = AtomicU64::new(0);
    let statuses = Statuses::default();
    let started = Instant::now();
    let mut runner = runner(30_000);
    let cases = runner.config().cases;
    let body = prop_oneof![
        2 => completion_request().prop_map(|b| ("/v1/completions", b)),
        2 => chat_request().prop_map(|b| ("/v1/chat/completions", b)),
        1 => query_request().prop_map(|b| ("/query", b)),
    ];
    runner
        .run(&(body, route()), |((main, body), (method, path))| {
            let path = if path == "main" { main } else { path };
            let t = Instant::now();
            let answer = send(&rt, &app, method, path, body.clone());
            slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            tally(&statuses, answer.status);
            check_answer(&answer, path, &body)
        })
        .unwrap();
    report(
        "serve: every route, damaged and hostile JSON",
        u64::from(cases),
        started,
        Duration::from_micros(slowest.into_inner()),
        &statuses,
    );
}
