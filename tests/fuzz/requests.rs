//! What the fuzz targets send and how they judge the answers: hostile values, requests of every
//! kind (half plausible, half hostile, some damaged bytes), the fixture index, and the checks
//! every answer must pass. Shared by `tests/fuzz` (the index's routes, index opening) and the
//! model test binary (the model server's routes, over the one loaded model).
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use ibid::index::{self, BuildOptions, Index};
use ibid::query_engine::QueryEngine;
use ibid::tokenize::TokenizerSpec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::stdlib;

/// An answer slower than this counts as a hang (the servers' own deadlines are shorter).
pub const SLOW: Duration = Duration::from_secs(10);

pub fn scale() -> u32 {
    std::env::var("IBID_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

pub fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config { cases: cases * scale(), failure_persistence: None, max_shrink_iters: 2000, ..Config::default() })
}

/// One line per target for the README's table (`cargo test --test fuzz -- --nocapture`), printed only
/// when every case passed: any panic or wrong answer fails the test with the (shrunk) input.
pub fn report(target: &str, inputs: u64, started: Instant, slowest: Duration, statuses: &Statuses) {
    let statuses: Vec<String> = statuses.lock().unwrap().iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!(
        "fuzz | {target} | {inputs} inputs | 0 panics | 0 wrong answers | slowest {:.1} ms | {:.0} s | {}",
        slowest.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64(),
        statuses.join(", ")
    );
}

/// How many answers had each status (the last try of each case).
pub type Statuses = std::sync::Mutex<std::collections::BTreeMap<u16, u64>>;

pub fn tally(statuses: &Statuses, status: StatusCode) {
    *statuses.lock().unwrap().entry(status.as_u16()).or_default() += 1;
}

/// A small real index (bytes) over a few standard-library files, and its documents' bytes.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub docs: Vec<Vec<u8>>,
}

pub fn fixture() -> &'static Fixture {
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

pub fn engine() -> Arc<QueryEngine> {
    static E: OnceLock<Arc<QueryEngine>> = OnceLock::new();
    E.get_or_init(|| {
        let index = Index::open(&fixture().dir).unwrap();
        Arc::new(QueryEngine::new(index, Some(TokenizerSpec::Bytes.load().unwrap())))
    })
    .clone()
}

// ---------------------------------------------------------------------------------------------
// Hostile values

pub fn number() -> impl Strategy<Value = Value> {
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

pub fn text() -> impl Strategy<Value = String> {
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

pub fn ids() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(0u32..300, 0..12).prop_map(|v| json!(v)),
        prop::collection::vec(any::<u32>(), 0..4).prop_map(|v| json!(v)),
        prop::collection::vec(prop::collection::vec(prop::collection::vec(0u32..260, 0..4), 0..5), 0..5).prop_map(|v| json!(v)),
        prop::collection::vec(prop::collection::vec(prop::collection::vec(97u32..123, 1..3), 1..70), 1..3).prop_map(|v| json!(v)),
    ]
}

/// Any JSON at all, nested a little.
pub fn anything() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text().prop_map(Value::String)];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field: its name, a plausible value, and a hostile one.
pub type Field = (&'static str, BoxedStrategy<Value>, BoxedStrategy<Value>);

pub fn field(
    name: &'static str,
    plausible: impl Strategy<Value = Value> + 'static,
    hostile: impl Strategy<Value = Value> + 'static,
) -> Field {
    (name, plausible.boxed(), hostile.boxed())
}

/// Requests, half of them plausible (each field absent or well-formed, so the request mostly gets
/// through to the engine), half hostile (any field may hold anything, a field nobody asked for,
/// the bytes damaged).
pub fn request(
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
pub fn damaged(body: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
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

pub fn query_request() -> impl Strategy<Value = Vec<u8>> {
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

pub fn common_fields() -> Vec<Field> {
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

pub fn completion_request() -> impl Strategy<Value = Vec<u8>> {
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

pub fn chat_request() -> impl Strategy<Value = Vec<u8>> {
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

pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    pub event_stream: bool,
}

pub fn send(rt: &tokio::runtime::Runtime, app: &Router, method: Method, path: &str, body: Vec<u8>) -> Answer {
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
pub fn check_answer(answer: &Answer, path: &str, input: &[u8]) -> Result<(), TestCaseError> {
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

pub fn route() -> impl Strategy<Value = (Method, &'static str)> {
    prop_oneof![
        12 => Just((Method::POST, "main")),
        1 => (prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE]),
              prop::sample::select(vec!["/", "/query", "/info", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/nope", "/v1/", "//"])),
    ]
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}
