//! The standing adversarial suite: random and hostile inputs for index opening and for every
//! request type of both servers (`serve-index`: `/`, `/query`, `/info`, `/health`; `serve`: the
//! OpenAI routes, `/v1/models`, `/metrics` and the index routes it mounts), driven by proptest on
//! stable Rust. A panic fails the case (proptest catches it and shrinks the input); so does an
//! answer that is not JSON, a 5xx, a count that brute force disagrees with, or an answer slower
//! than [`SLOW`] (a hang).
//!
//! `IBID_FUZZ_SCALE` multiplies the number of inputs: 1 in the test suite (74,000 inputs, fresh
//! random ones each run),
//! `scripts/fuzz.sh` runs 14 (over a million) and prints the table for the README.
//!
//! The model server's routes run over the real Gemma tokenizer and chat template; its generation
//! worker is replaced by one that answers every job at once, because what is fuzzed here is the
//! HTTP layer and request checking (a million generations would take days). Generation under
//! hostile requests is the mixed load test's job (`scripts/load_test.py --hostile`).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use common::*;
use ibid::index::{self, BuildOptions, CnfOptions, Index};
use ibid::query_engine::QueryEngine;
use ibid::server::worker::{Event, Finish};
use ibid::tokenize::TokenizerSpec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use tower::ServiceExt;

/// An answer slower than this counts as a hang (the servers' own deadlines are shorter).
const SLOW: Duration = Duration::from_secs(10);

fn scale() -> u32 {
    std::env::var("IBID_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases: cases * scale(), failure_persistence: None, max_shrink_iters: 2000, ..Config::default() })
}

/// One line per target for the README's table (`cargo test --test fuzz -- --nocapture`), printed only
/// when every case passed: any panic or wrong answer fails the test with the (shrunk) input.
fn report(target: &str, inputs: u64, started: Instant, slowest: Duration, statuses: &Statuses) {
    let statuses: Vec<String> = statuses.lock().unwrap().iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!(
        "fuzz | {target} | {inputs} inputs | 0 panics | 0 wrong answers | slowest {:.1} ms | {:.0} s | {}",
        slowest.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64(),
        statuses.join(", ")
    );
}

/// How many answers had each status (the last try of each case).
type Statuses = std::sync::Mutex<std::collections::BTreeMap<u16, u64>>;

fn tally(statuses: &Statuses, status: StatusCode) {
    *statuses.lock().unwrap().entry(status.as_u16()).or_default() += 1;
}

/// A small real index (bytes) over a few standard-library files, and its documents' bytes.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    docs: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("c.jsonl");
        let mut docs = Vec::new();
        let mut lines = String::new();
        for name in ["bisect.py", "heapq.py", "colorsys.py", "keyword.py"] {
            let text = std::fs::read_to_string(stdlib().join(name)).unwrap();
            for chunk in text.as_bytes().chunks(1500) {
                let chunk = String::from_utf8_lossy(chunk).into_owned();
                lines.push_str(&json!({"text": chunk, "file": name}).to_string());
                lines.push('\n');
                docs.push(chunk.into_bytes());
            }
        }
        std::fs::write(&corpus, lines).unwrap();
        let out = dir.path().join("idx");
        let mut options = BuildOptions::new(out.clone());
        options.max_shard_tokens = Some(20_000);
        options.threads = 1;
        let tokenizer = TokenizerSpec::Bytes.load().unwrap();
        index::build(&[corpus], tokenizer.as_ref(), &options, &index::Quiet).unwrap();
        Fixture { _dir: dir, dir: out, docs }
    })
}

fn engine() -> Arc<QueryEngine> {
    static E: OnceLock<Arc<QueryEngine>> = OnceLock::new();
    E.get_or_init(|| {
        let index = Index::open(&fixture().dir).unwrap();
        Arc::new(QueryEngine::new(index, Some(TokenizerSpec::Bytes.load().unwrap())))
    })
    .clone()
}

// ---------------------------------------------------------------------------------------------
// Hostile values

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(2),
            json!(255),
            json!(256),
            json!(65535),
            json!(262_144),
            json!(i32::MAX),
            json!(u32::MAX),
            json!(1u64 << 32),
            json!(1u64 << 53),
            json!(4_611_686_018_427_387_904u64),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1e308),
            json!(-1e308),
            json!(0.5),
            json!(-0.0),
            json!(1e-300),
        ]),
        any::<i64>().prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        any::<f64>().prop_filter("JSON has no NaN", |f| f.is_finite()).prop_map(|v| json!(v)),
        (0u64..400).prop_map(|v| json!(v)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "\n     ",
            "\t",
            "the",
            "def ",
            "return",
            "AND",
            "OR",
            "a AND b",
            " AND ",
            "OR OR",
            "AND AND",
            "heap OR bisect AND return",
            "\u{0}",
            "\u{FFFD}",
            "<start_of_turn>",
            "<bos>",
            "<eos>",
            "é漢字🦀",
            "\\u0000",
        ])
        .prop_map(String::from),
        ".{0,40}",
        "[a-z ()=:\n]{0,120}",
        "(the|AND|OR|def|[ a-z]){0,30}",
        (1usize..2500).prop_map(|n| "ab ".repeat(n)),
    ]
}

fn ids() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(0u32..300, 0..12).prop_map(|v| json!(v)),
        prop::collection::vec(any::<u32>(), 0..4).prop_map(|v| json!(v)),
        prop::collection::vec(prop::collection::vec(prop::collection::vec(0u32..260, 0..4), 0..5), 0..5).prop_map(|v| json!(v)),
        prop::collection::vec(prop::collection::vec(prop::collection::vec(97u32..123, 1..3), 1..70), 1..3).prop_map(|v| json!(v)),
    ]
}

/// Any JSON at all, nested a little.
fn anything() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text().prop_map(Value::String)];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field: its name, a plausible value, and a hostile one.
type Field = (&'static str, BoxedStrategy<Value>, BoxedStrategy<Value>);

fn field(name: &'static str, plausible: impl Strategy<Value = Value> + 'static, hostile: impl Strategy<Value = Value> + 'static) -> Field {
    (name, plausible.boxed(), hostile.boxed())
}

/// Requests, half of them plausible (each field absent or well-formed, so the request mostly gets
/// through to the engine), half hostile (any field may hold anything, a field nobody asked for,
/// the bytes damaged).
fn request(
    required: &'static [&'static str],
    fields: Vec<Field>,
    fixup: fn(&mut serde_json::Map<String, Value>, bool),
) -> impl Strategy<Value = Vec<u8>> {
    let (plausible, hostile): (Vec<_>, Vec<_>) = fields
        .into_iter()
        .map(|(name, good, bad)| {
            let absent = if required.contains(&name) { 0 } else { 1 };
            let plausible = prop_oneof![absent => Just(None), 2 => good.clone().prop_map(Some)].prop_map(move |v| v.map(|v| (name, v)));
            let hostile = prop_oneof![3 => Just(None), 3 => good.prop_map(Some), 2 => bad.prop_map(Some), 1 => anything().prop_map(Some)]
                .prop_map(move |v| v.map(|v| (name, v)));
            (plausible, hostile)
        })
        .unzip();
    let to_object = |fields: Vec<Option<(&'static str, Value)>>| -> serde_json::Map<String, Value> {
        fields.into_iter().flatten().map(|(k, v)| (k.to_string(), v)).collect()
    };
    let plausible = (plausible, any::<bool>()).prop_map(move |(f, coin)| {
        let mut map = to_object(f);
        fixup(&mut map, coin);
        Value::Object(map).to_string().into_bytes()
    });
    let hostile = (hostile, prop::option::weighted(0.1, ("[a-z_]{1,10}", anything()))).prop_map(move |(f, extra)| {
        let mut map = to_object(f);
        if let Some((k, v)) = extra {
            map.insert(k, v);
        }
        Value::Object(map)
    });
    prop_oneof![plausible, damaged(hostile)]
}

/// The body as sent: the JSON, or (three times in ten) its bytes damaged.
fn damaged(body: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    (body, 0u8..10, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, how, at, byte)| {
        let mut bytes = v.to_string().into_bytes();
        let i = at.index(bytes.len() + 1);
        match how {
            0 => bytes.truncate(i),
            1 => bytes.insert(i, byte),
            2 if !bytes.is_empty() => {
                let last = bytes.len() - 1;
                bytes[i.min(last)] = byte;
            }
            _ => {}
        }
        bytes
    })
}

fn query_request() -> impl Strategy<Value = Vec<u8>> {
    let types = prop::sample::select(vec![
        "count",
        "prob",
        "ntd",
        "infgram_prob",
        "infgram_ntd",
        "find",
        "search_docs",
        "get_doc_by_rank",
        "get_doc_by_ptr",
        "get_doc_by_ix",
    ]);
    let small = |hi: u64| (0..hi).prop_map(|v| json!(v));
    request(
        &["query_type"],
        vec![
            field("query_type", types.prop_map(|t| json!(t)), prop_oneof![Just(json!("bogus")), Just(json!("COUNT")), anything()]),
            field("query", text().prop_map(Value::String), anything()),
            field("query_ids", ids(), anything()),
            field("max_support", small(3000), number()),
            field("maxnum", (1u64..10).prop_map(|v| json!(v)), number()),
            field("max_disp_len", small(2000), number()),
            field("max_clause_freq", small(200_000), number()),
            field("max_diff_tokens", small(2000), number()),
            field("s", small(3), number()),
            field("rank", small(40_000), number()),
            field("ptr", small(40_000), number()),
            field("doc_ix", small(60), number()),
            field("seed", any::<u64>().prop_map(|v| json!(v)), number()),
            field("index", text().prop_map(Value::String), anything()),
        ],
        // a plausible request asks by text or by ids, not both
        |map, by_text| {
            map.remove(if by_text { "query_ids" } else { "query" });
            if !map.contains_key("query") && !map.contains_key("query_ids") {
                map.insert("query".into(), json!("return "));
            }
        },
    )
}

fn common_fields() -> Vec<Field> {
    let unit = |hi: f64| (0.0..hi).prop_map(|v| json!(v));
    vec![
        field("model", text().prop_map(Value::String), anything()),
        field("max_tokens", (1i64..8).prop_map(|v| json!(v)), number()),
        field("temperature", prop_oneof![Just(json!(0)), unit(2.0)], number()),
        field("top_p", unit(1.0), number()),
        field("top_k", prop_oneof![(0i64..100).prop_map(|v| json!(v)), Just(json!(262_144))], number()),
        field("seed", any::<u32>().prop_map(|v| json!(v)), number()),
        field("stop", prop_oneof![text().prop_map(Value::String), prop::collection::vec(text(), 0..5).prop_map(|v| json!(v))], anything()),
        field("stream", any::<bool>().prop_map(Value::Bool), anything()),
        field("stream_options", Just(json!({"include_usage": true})), anything()),
        field("n", Just(json!(1)), number()),
        field("user", text().prop_map(Value::String), anything()),
        field("presence_penalty", Just(json!(0)), number()),
        field("frequency_penalty", Just(json!(0)), number()),
    ]
}

fn completion_request() -> impl Strategy<Value = Vec<u8>> {
    let mut fields = common_fields();
    fields.push(field(
        "prompt",
        prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(0u32..300, 0..8).prop_map(|v| json!(v)),
            text().prop_map(|t| json!([t])),
        ],
        prop_oneof![
            prop::collection::vec(any::<u32>(), 0..8).prop_map(|v| json!(v)),
            prop::collection::vec(text(), 0..3).prop_map(|v| json!(v)),
            anything(),
        ],
    ));
    request(&["prompt"], fields, |_, _| {})
}

fn chat_request() -> impl Strategy<Value = Vec<u8>> {
    let role = prop::sample::select(vec!["system", "user", "assistant", "developer"]);
    let content = prop_oneof![
        text().prop_map(Value::String),
        prop::collection::vec(text(), 0..3)
            .prop_map(|p| json!(p.into_iter().map(|t| json!({"type": "text", "text": t})).collect::<Vec<_>>())),
    ];
    let message = (role, content).prop_map(|(r, c)| json!({"role": r, "content": c}));
    let odd_message = (prop::sample::select(vec!["tool", "", "USER", "wizard"]), anything(), prop::option::of(anything()))
        .prop_map(|(r, c, extra)| json!({"role": r, "content": c, "name": extra}));
    let mut fields = common_fields();
    fields.push(field(
        "messages",
        prop::collection::vec(message.clone(), 1..4).prop_map(Value::Array),
        prop_oneof![prop::collection::vec(prop_oneof![message, odd_message], 0..4).prop_map(Value::Array), anything()],
    ));
    fields.push(field("max_completion_tokens", (1i64..8).prop_map(|v| json!(v)), number()));
    request(&["messages"], fields, |_, _| {})
}

// ---------------------------------------------------------------------------------------------
// Driving a router

struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    event_stream: bool,
}

fn send(rt: &tokio::runtime::Runtime, app: &Router, method: Method, path: &str, body: Vec<u8>) -> Answer {
    rt.block_on(async {
        let request =
            Request::builder().method(method).uri(path).header("content-type", "application/json").body(Body::from(body)).unwrap();
        let response = tokio::time::timeout(SLOW, app.clone().oneshot(request)).await.expect("an answer in time").unwrap();
        let status = response.status();
        let event_stream = response.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let body = tokio::time::timeout(SLOW, axum::body::to_bytes(response.into_body(), 64 << 20))
            .await
            .expect("the body in time")
            .unwrap()
            .to_vec();
        Answer { status, body, event_stream }
    })
}

/// Every answer is JSON (or server-sent events of JSON) with a status that says whose fault it
/// was; nothing is a 500.
fn check_answer(answer: &Answer, path: &str, input: &[u8]) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned();
    let allowed = [200, 400, 404, 405, 413, 503];
    prop_assert!(
        allowed.contains(&answer.status.as_u16()),
        "status {} for {}: {}",
        answer.status,
        shown,
        String::from_utf8_lossy(&answer.body)
    );
    if path == "/metrics" && answer.status == StatusCode::OK {
        // Prometheus text: `name{labels} value` under `#` comments.
        let text = String::from_utf8(answer.body.clone()).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            prop_assert!(value.parse::<f64>().is_ok(), "metrics line {line:?}");
        }
    } else if answer.event_stream {
        let text = String::from_utf8(answer.body.clone()).unwrap();
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            prop_assert!(data == "[DONE]" || serde_json::from_str::<Value>(data).is_ok(), "event {data:?} for {shown}");
        }
    } else {
        let v: Result<Value, _> = serde_json::from_slice(&answer.body);
        prop_assert!(v.is_ok(), "a body that is not JSON for {}: {:?}", shown, String::from_utf8_lossy(&answer.body));
        if answer.status != StatusCode::OK {
            prop_assert!(v.unwrap().get("error").is_some(), "an error without an `error` field for {shown}");
        }
    }
    Ok(())
}

fn route() -> impl Strategy<Value = (Method, &'static str)> {
    prop_oneof![
        12 => Just((Method::POST, "main")),
        1 => (prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE]),
              prop::sample::select(vec!["/", "/query", "/info", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/nope", "/v1/", "//"])),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Targets

/// `serve-index`'s routes, and the engine answering directly: n-gram counts are checked against
/// brute force over the documents.
#[test]
fn fuzz_index_server() {
    let rt = runtime();
    let options =
        ibid::server::query_routes::QueryServerOptions { max_body_bytes: 16 << 10, timeout: Duration::from_secs(5), ..Default::default() };
    let app = ibid::server::query_routes::router(engine(), &options);
    let slowest = AtomicU64::new(0);
    let statuses = Statuses::default();
    let started = Instant::now();
    let mut runner = runner(40_000);
    let cases = runner.config().cases;
    let docs = &fixture().docs;
    runner
        .run(&(query_request(), route(), prop::sample::select(vec!["/", "/query"])), |(body, (method, path), main)| {
            let path = if path == "main" { main } else { path };
            let t = Instant::now();
            let answer = send(&rt, &app, method.clone(), path, body.clone());
            slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            tally(&statuses, answer.status);
            check_answer(&answer, path, &body)?;
            // Counts of n-grams given by id, against brute force.
            if let (Ok(req), StatusCode::OK, Method::POST) = (serde_json::from_slice::<Value>(&body), answer.status, method) {
                if req["query_type"] == "count" && (path == "/" || path == "/query") {
                    if let Some(ngram) = req["query_ids"].as_array().filter(|a| a.iter().all(Value::is_u64)).filter(|a| !a.is_empty()) {
                        let needle: Vec<u8> = ngram.iter().map(|v| v.as_u64().unwrap() as u8).collect();
                        let want: u64 = docs.iter().map(|d| d.windows(needle.len()).filter(|w| *w == &needle[..]).count() as u64).sum();
                        let got: Value = serde_json::from_slice(&answer.body).unwrap();
                        prop_assert_eq!(got["count"].as_u64(), Some(want), "count of {:?}", needle);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    report(
        "serve-index: every route, damaged and hostile JSON",
        u64::from(cases),
        started,
        Duration::from_micros(slowest.into_inner()),
        &statuses,
    );
}

/// A stand-in for the generation worker: every job is answered at once with one piece of text.
fn answering_worker(mut jobs: tokio::sync::mpsc::Receiver<ibid::server::worker::Job>, waiting: Arc<std::sync::atomic::AtomicU64>) {
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
    let model = Arc::new(ibid::model::Model::load(model_path()).unwrap());
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

/// One file of the index damaged: opening refuses it with an error, or it opens and every query
/// answers (an error or an answer, never a panic), and `verify` says what is wrong.
#[test]
fn fuzz_index_opening() {
    let source = &fixture().dir;
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(source)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
        })
        .collect();
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("idx");
    let slowest = AtomicU64::new(0);
    let opened = Statuses::default();
    let started = Instant::now();
    let mut runner = runner(4_000);
    let cases = runner.config().cases;
    let damage = (prop::sample::select(names), 0u8..7, any::<prop::sample::Index>(), any::<u64>(), anything());
    runner
        .run(&(damage, prop::collection::vec(0u32..260, 0..4)), |((target, how, at, word, value), query)| {
            let t = Instant::now();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            for (name, bytes) in &files {
                let mut bytes = bytes.clone();
                if *name == target {
                    let i = at.index(bytes.len() + 1);
                    match how {
                        0 => bytes.truncate(i),
                        1 => bytes.extend_from_slice(&word.to_le_bytes()),
                        2 if i < bytes.len() => bytes[i] ^= 1 << (word % 8),
                        3 if i + 8 <= bytes.len() => bytes[i..i + 8].copy_from_slice(&word.to_le_bytes()),
                        4 => continue, // the file is missing
                        5 if name.ends_with(".json") => bytes = damage_json(&bytes, &value, word),
                        _ if i < bytes.len() => bytes[i] = word as u8,
                        _ => {}
                    }
                }
                std::fs::write(dir.join(name), bytes).unwrap();
            }
            let index = Index::open(&dir);
            // 200: opened (and queried), 400: refused
            tally(&opened, if index.is_ok() { StatusCode::OK } else { StatusCode::BAD_REQUEST });
            if let Ok(index) = index {
                let _ = index.verify(true);
                let _ = index.count(&query);
                let _ = index.ntd(&query, 1 + word % 2000);
                let _ = index.infgram_prob(&query, 101);
                let _ = index.search_docs(&query, 2, 50, Some(word));
                let _ = index.doc_by_ix(word % 40, 100);
                let _ = index.doc_by_rank(0, word % 30_000, 100);
                let _ = index.doc_by_ptr(0, word % 30_000, 100);
                let _ = index.count_cnf(&[vec![vec![101]], vec![query.clone(), vec![32]]], &CnfOptions::default());
            }
            slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    report(
        &format!("index opening: one of {} files damaged (200 opened, 400 refused)", files.len()),
        u64::from(cases),
        started,
        Duration::from_micros(slowest.into_inner()),
        &opened,
    );
}

/// The manifest with one field replaced by a hostile value (or removed).
fn damage_json(bytes: &[u8], value: &Value, word: u64) -> Vec<u8> {
    let Ok(mut manifest) = serde_json::from_slice::<Value>(bytes) else { return bytes.to_vec() };
    let mut paths = Vec::new();
    collect_paths(&manifest, &mut Vec::new(), &mut paths);
    if paths.is_empty() {
        return bytes.to_vec();
    }
    let path = &paths[(word as usize) % paths.len()];
    let mut at = &mut manifest;
    for step in &path[..path.len() - 1] {
        at = match step {
            Step::Key(k) => &mut at[k.as_str()],
            Step::Ix(i) => &mut at[*i],
        };
    }
    match (path.last().unwrap(), word % 5) {
        (Step::Key(k), 0) => {
            at.as_object_mut().unwrap().remove(k);
        }
        (Step::Key(k), _) => at[k.as_str()] = value.clone(),
        (Step::Ix(i), _) => at[*i] = value.clone(),
    }
    serde_json::to_vec(&manifest).unwrap()
}

#[derive(Clone)]
enum Step {
    Key(String),
    Ix(usize),
}

fn collect_paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Step::Key(k.clone()));
                out.push(prefix.clone());
                collect_paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Step::Ix(i));
                out.push(prefix.clone());
                collect_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}
