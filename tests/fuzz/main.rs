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
//! The model server's routes (in the model test binary, `tests/model/fuzz_server.rs`, over the
//! one loaded model) run over the real Gemma tokenizer and chat template; its generation
//! worker is replaced by one that answers every job at once, because what is fuzzed here is the
//! HTTP layer and request checking (a million generations would take days). Generation under
//! hostile requests is the mixed load test's job (`scripts/load_test.py --hostile`).

#[path = "../common/mod.rs"]
mod common;
mod requests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use ibid::index::{CnfOptions, Index};
use proptest::prelude::*;
use requests::*;
use serde_json::Value;

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
