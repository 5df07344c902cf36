//! `ibid serve-index` with a real HTTP client: answers, errors as JSON with 4xx, the server stays up,
//! and SIGTERM stops it cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{json, Value};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(index: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = Command::new(ibid_bin())
        .args(["serve-index", index.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Server { child, url }
}

fn post(server: &Server, body: &str) -> (u16, Value) {
    let resp = ureq::post(&format!("{}/", server.url)).set("Content-Type", "application/json").send_string(body);
    match resp {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().expect("error bodies are JSON")),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn build_index(dir: &std::path::Path) -> std::path::PathBuf {
    let f = dir.join("c.jsonl");
    let lines: String = ["the cat sat on the mat", "the cat ate the fish", "a dog sat on the log"]
        .iter()
        .map(|t| format!("{}\n", json!({"text": t, "src": "test"})))
        .collect();
    std::fs::write(&f, lines).unwrap();
    let out = dir.join("idx");
    run(Command::new(ibid_bin()).args(["build", f.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"]));
    out
}

#[test]
fn serves_queries_and_survives_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let server = start(&index, &["--max-body", "2K"]);

    let health: Value = ureq::get(&format!("{}/health", server.url)).call().unwrap().into_json().unwrap();
    assert_eq!(health["status"], "ok");

    let (code, v) = post(&server, r#"{"index": "mine", "query_type": "count", "query": "the cat"}"#);
    assert_eq!((code, v["count"].clone()), (200, json!(2)));
    assert_eq!(v["tokens"].as_array().unwrap().len(), 7, "bytes: one token per byte");
    let (_, v) = post(&server, r#"{"query_type": "count", "query": "sat on AND the", "max_diff_tokens": 7}"#);
    assert_eq!(v["count"], json!(2), "CNF by text: {v}");
    let (_, v) = post(&server, r#"{"query_type": "prob", "query": "the cat "}"#);
    assert_eq!((v["prompt_cnt"].clone(), v["cont_cnt"].clone()), (json!(2), json!(2)));
    let (_, v) = post(&server, r#"{"query_type": "ntd", "query": "the cat "}"#);
    assert_eq!(v["result_by_token_id"]["115"]["cont_cnt"], json!(1), "{v}"); // "s"
    assert_eq!(v["result_by_token_id"]["97"]["token"], json!("a"));
    let (_, v) = post(&server, r#"{"query_type": "infgram_prob", "query": "xyz the dog"}"#);
    assert_eq!(v["suffix_len"], json!(3), "' do' is the longest suffix before 'g': {v}");
    let (_, v) = post(&server, r#"{"query_type": "search_docs", "query": "dog", "maxnum": 2, "max_disp_len": 50, "seed": 1}"#);
    assert_eq!(v["documents"][0]["text"], json!("a dog sat on the log"));
    assert!(v["documents"][0]["metadata"].as_str().unwrap().contains("\"src\":\"test\""));
    let (_, v) = post(&server, r#"{"query_type": "get_doc_by_ix", "doc_ix": 1}"#);
    assert_eq!(v["text"], json!("the cat ate the fish"));
    let (_, v) = post(&server, r#"{"query_type": "find", "query_ids": [116, 104, 101]}"#);
    assert_eq!(v["cnt"], json!(5));

    let bad = [
        ("{not json", "malformed request"),
        (r#"{"query_type": "count"}"#, "neither query nor query_ids"),
        (r#"{"query_type": "count", "query": ""}"#, "empty"),
        (r#"{"query_type": "count", "query": "x", "query_ids": [1]}"#, "not both"),
        (r#"{"query_type": "count", "query": "x", "colour": 1}"#, "unknown field"),
        (r#"{"query_type": "teleport", "query": "x"}"#, "unknown variant"),
        (r#"{"query_type": "ntd", "query": "x", "max_support": -5}"#, "invalid value"),
        (r#"{"query_type": "ntd", "query": "x", "max_support": "lots"}"#, "invalid type"),
        (r#"{"query_type": "count", "query_ids": [300]}"#, "out of range"),
        (r#"{"query_type": "search_docs", "query": "the", "maxnum": 100000}"#, "maxnum"),
        (r#"{"query_type": "get_doc_by_ix", "doc_ix": 99}"#, "does not exist"),
        (r#"{"query_type": "get_doc_by_rank", "s": 3, "rank": 0}"#, "shard 3"),
        (r#"{"query_type": "prob", "query_ids": []}"#, "at least one token"),
        (r#"{"query_type": "ntd", "query_ids": [[[1]]]}"#, "not AND/OR"),
    ];
    for (body, expected) in bad {
        let (code, v) = post(&server, body);
        assert_eq!(code, 400, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(expected), "{body}: {msg}");
    }
    let huge = format!(r#"{{"query_type": "count", "query": "{}"}}"#, "a".repeat(5000));
    let (code, v) = post(&server, &huge);
    assert_eq!(code, 413, "{v}");
    assert!(v["error"].is_string());
    let missing = ureq::get(&format!("{}/nope", server.url)).call();
    assert!(matches!(missing, Err(ureq::Error::Status(404, _))));
    // a route asked with the wrong method: 405 with a JSON body (it had none)
    for wrong in [ureq::get(&format!("{}/", server.url)).call(), ureq::post(&format!("{}/info", server.url)).call()] {
        match wrong {
            Err(ureq::Error::Status(405, r)) => {
                let v: Value = r.into_json().expect("a JSON body");
                assert!(v["error"].as_str().unwrap().contains("method"), "{v}");
            }
            other => panic!("{other:?}"),
        }
    }

    // still serving
    let (code, v) = post(&server, r#"{"query_type": "count", "query": "the"}"#);
    assert_eq!((code, v["count"].clone()), (200, json!(5)));
}

#[test]
fn stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    let mut server = start(&index, &["--max-body", "2K"]);
    let (code, _) = post(&server, r#"{"query_type": "count", "query": "cat"}"#);
    assert_eq!(code, 200);
    run(Command::new("kill").args(["-TERM", &server.child.id().to_string()]));
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(server.child.stderr.as_mut().unwrap(), &mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
}

#[test]
fn refuses_a_corrupt_index_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let index = build_index(dir.path());
    std::fs::write(index.join("table.0"), b"short").unwrap();
    let out = Command::new(ibid_bin()).args(["serve-index", index.to_str().unwrap(), "--addr", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt index"));
}

/// The process's CPU time so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    // fields after the command name: state is [0], utime [11], stime [12] (clock ticks, 100 per second)
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// Issue: a timed-out CNF query kept computing behind its 503 (20 CPU-seconds after four of them,
/// SIGTERM not honoured within 15 s). Its deadline is now checked inside the query's loops: once
/// the 503s are out the server is idle, and SIGTERM ends it at once.
#[test]
fn a_timed_out_query_stops_computing() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let mut size = 0;
    for entry in std::fs::read_dir(stdlib()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") && size < 6_000_000 {
            size += std::fs::metadata(&path).unwrap().len();
            std::fs::copy(&path, corpus.join(path.file_name().unwrap())).unwrap();
        }
    }
    let index = dir.path().join("idx");
    run(Command::new(ibid_bin()).args(["build", corpus.to_str().unwrap(), "-o", index.to_str().unwrap(), "-q"]));
    let server = start(&index, &["--timeout", "0.05"]);
    let pid = server.child.id();

    // Eight clauses of four common letters each, far apart: ~250 ms of work each here, eight of
    // them at once (two computed at a time, the rest waiting for their turn).
    let clause = ["e OR t OR a OR o", "i OR n OR s OR r", "h OR l OR d OR c", "u OR m OR f OR p"];
    let cnf = [clause, clause].concat().join(" AND ");
    let heavy = json!({"query_type": "count", "query": cnf, "max_clause_freq": 1_000_000, "max_diff_tokens": 100_000});
    let started = std::time::Instant::now();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let posts: Vec<_> = (0..8).map(|_| s.spawn(|| post(&server, &heavy.to_string()))).collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for (code, v) in &answers {
        assert_eq!(*code, 503, "{v}");
        assert!(v["error"].as_str().unwrap().contains("deadline"), "{v}");
    }
    assert!(started.elapsed().as_secs_f64() < 5.0, "answered after {:?}", started.elapsed());
    // Idle afterwards: no query goes on computing behind its answer.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before = cpu_seconds(pid);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let burnt = cpu_seconds(pid) - before;
    assert!(burnt < 0.2, "{burnt} CPU-seconds spent after every query was answered");
    // The same query with a deadline it can meet is answered, so the 503s were not refusals.
    let (code, v) = post(&server, &json!({"query_type": "count", "query": "e AND t", "max_diff_tokens": 3}).to_string());
    assert_eq!(code, 200, "{v}");
    assert!(v["count"].as_u64().unwrap() > 0, "{v}");
}
