//! ibid's answers equal infini-gram 2.6.0's engine on indexes infini-gram's own indexer built
//! (u8 text and u16 tokens, two shards): 1,000 random queries of each type.
//!
//! Engine quirks are kept out of the data rather than papered over: each shard ends with a token
//! that occurs nowhere else (the engine conflates "end of shard" and "end of document" when it
//! splits a range), and the end-of-document id is one no document uses.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use ibid::tokenize::TokenWidth;
use serde_json::{json, Value};

fn jsonl(cmd: &mut Command, requests: &[Value]) -> Vec<Value> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
    if let Some(dump) = std::env::var_os("IBID_TEST_DUMP") {
        std::fs::write(dump, &input).unwrap();
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), requests.len());
    answers
}

/// A deterministic sampler of contexts from the corpus.
struct Sampler {
    all: Vec<u32>,
    state: u64,
}

impl Sampler {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.state >> 33
    }
    /// An n-gram from the corpus, sometimes with its first token replaced so it may not occur.
    fn context(&mut self, max_len: usize, vocab: u32) -> Vec<u32> {
        let n = 1 + self.next() as usize % max_len;
        let start = self.next() as usize % (self.all.len() - n);
        let mut ctx = self.all[start..start + n].to_vec();
        if self.next().is_multiple_of(4) {
            ctx[0] = self.next() as u32 % vocab;
        }
        ctx
    }
}

struct Case {
    ours: Value,
    theirs: Value,
}

fn cases(sampler: &mut Sampler, vocab: u32, with_cnf: bool) -> Vec<Case> {
    let mut out = Vec::new();
    for i in 0..1000 {
        let ctx = sampler.context(10, vocab);
        out.push(Case { ours: json!({"query_type": "count", "query_ids": ctx}), theirs: json!({"op": "count", "ids": ctx}) });
        out.push(Case { ours: json!({"query_type": "find", "query_ids": ctx}), theirs: json!({"op": "find", "ids": ctx}) });
        let (head, next) = (ctx[..ctx.len() - 1].to_vec(), ctx[ctx.len() - 1]);
        if !head.is_empty() {
            out.push(Case {
                ours: json!({"query_type": "prob", "query_ids": ctx}),
                theirs: json!({"op": "prob", "ids": head, "next": next}),
            });
        }
        // max_support small now and then, to compare the sampled (approx) answers too
        let ms = if i % 5 == 0 { 1 + sampler.next() % 8 } else { 1000 };
        out.push(Case {
            ours: json!({"query_type": "ntd", "query_ids": ctx, "max_support": ms}),
            theirs: json!({"op": "ntd", "ids": ctx, "max_support": ms}),
        });
        let long = sampler.context(24, vocab);
        let (lhead, lnext) = (long[..long.len() - 1].to_vec(), long[long.len() - 1]);
        if !lhead.is_empty() {
            out.push(Case {
                ours: json!({"query_type": "infgram_prob", "query_ids": long}),
                theirs: json!({"op": "infgram_prob", "ids": lhead, "next": lnext}),
            });
        }
        out.push(Case {
            ours: json!({"query_type": "infgram_ntd", "query_ids": long, "max_support": ms}),
            theirs: json!({"op": "infgram_ntd", "ids": long, "max_support": ms}),
        });
        if with_cnf && i % 4 == 0 {
            let a = sampler.context(2, vocab);
            let b = sampler.context(2, vocab);
            let c = sampler.context(1, vocab);
            let cnf = json!([[a], [b, c]]);
            let diff = 1 + sampler.next() % 40;
            // Subsampled clauses are drawn at random by each engine, so compare exact CNFs only:
            // the largest cap a request may ask, above any count in these small indexes.
            let cap = ibid::query_engine::MAX_CLAUSE_FREQ;
            out.push(Case {
                ours: json!({"query_type": "count", "query_ids": cnf, "max_diff_tokens": diff, "max_clause_freq": cap}),
                theirs: json!({"op": "count_cnf", "cnf": cnf, "max_diff_tokens": diff, "max_clause_freq": cap}),
            });
        }
    }
    out
}

/// The fields both answers share must be equal.
fn compare(case: &Case, ours: &Value, theirs: &Value) {
    assert!(ours.get("error").is_none() && theirs.get("error").is_none(), "{}: {ours} / {theirs}", case.ours);
    for (key, want) in theirs.as_object().unwrap() {
        if key == "us" || key == "id" {
            continue;
        }
        let got = &ours[key.as_str()];
        assert_eq!(got, want, "{key} differs for {} (ibid: {ours}, infini-gram: {theirs})", case.ours);
    }
}

fn agree(dir: &Path, width: TokenWidth, eos: u32, vocab: u32, all: Vec<u32>, with_cnf: bool, docs: u64) {
    let mut sampler = Sampler { all, state: 42 };
    let mut cases = cases(&mut sampler, vocab, with_cnf);
    for s in 0..2usize {
        for k in 0..50u64 {
            let rank = sampler.next() % 1000;
            let disp = 1 + sampler.next() % 30;
            cases.push(Case {
                ours: json!({"query_type": "get_doc_by_rank", "s": s, "rank": rank, "max_disp_len": disp}),
                theirs: json!({"op": "get_doc_by_rank", "s": s, "rank": rank, "max_disp_len": disp}),
            });
            let ix = (k * 7) % docs;
            cases.push(Case {
                ours: json!({"query_type": "get_doc_by_ix", "doc_ix": ix, "max_disp_len": disp}),
                theirs: json!({"op": "get_doc_by_ix", "doc_ix": ix, "max_disp_len": disp}),
            });
        }
    }
    let d = dir.to_str().unwrap();
    let w = width.bytes().to_string();
    let eos_s = eos.to_string();
    let ours = jsonl(
        Command::new(ibid_bin()).args(["query", d, "--token-width", &w, "--eos", &eos_s]),
        &cases.iter().map(|c| c.ours.clone()).collect::<Vec<_>>(),
    );
    let theirs = jsonl(
        &mut infinigram(&["query", d, "--token-width", &w, "--eos", &eos_s]),
        &cases.iter().map(|c| c.theirs.clone()).collect::<Vec<_>>(),
    );
    let mut by_type = std::collections::BTreeMap::<String, usize>::new();
    for ((case, o), t) in cases.iter().zip(&ours).zip(&theirs) {
        compare(case, o, t);
        *by_type.entry(case.ours["query_type"].as_str().unwrap().to_string()).or_default() += 1;
    }
    // the sample really covers each type, with answers of every kind
    for t in ["count", "find", "prob", "ntd", "infgram_prob", "infgram_ntd", "get_doc_by_rank", "get_doc_by_ix"] {
        assert!(by_type.get(t).copied().unwrap_or(0) >= 100, "{t}: {by_type:?}");
    }
    let counts: Vec<u64> = ours.iter().filter_map(|a| a["count"].as_u64()).collect();
    assert!(counts.contains(&0) && counts.contains(&1) && counts.iter().any(|&c| c > 50), "{counts:?}");
    assert!(ours.iter().any(|a| a["approx"] == true), "no approximate ntd in the sample");
}

#[test]
fn u16_tokens_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    let width = TokenWidth::U16;
    let mut streams = Vec::new();
    for (shard, seed) in [(0usize, 3u64), (1, 5)] {
        let mut docs = u16_docs(seed, 40);
        docs.last_mut().unwrap().push(65_533 - shard as u32); // unique end of shard
        streams.push(write_shard(dir.path(), shard, width, &docs));
    }
    run(&mut infinigram(&["index", dir.path().to_str().unwrap(), "--token-width", "2"]));
    let all: Vec<u32> = streams.concat().into_iter().filter(|&t| t != 0xFFFF).collect();
    agree(dir.path(), width, 65_000, 60_000, all, false, 80);
}

#[test]
fn u8_text_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    let stdlib = stdlib();
    let files = [["argparse.py", "shlex.py", "glob.py"], ["textwrap.py", "fnmatch.py", "string.py"]];
    let mut streams = Vec::new();
    for (shard, names) in files.iter().enumerate() {
        let mut docs: Vec<Vec<u32>> =
            names.iter().map(|f| std::fs::read(stdlib.join(f)).unwrap().into_iter().map(u32::from).collect()).collect();
        // 0xFD and 0xFC occur in no UTF-8 text. (Not a low byte: the engine's ntd reads before the
        // start of the suffix array when a context's range begins at rank 0, and crashes.)
        docs.last_mut().unwrap().push(0xFD - shard as u32);
        streams.push(write_shard(dir.path(), shard, TokenWidth::U8, &docs));
    }
    run(&mut infinigram(&["index", dir.path().to_str().unwrap(), "--token-width", "1"]));
    let all: Vec<u32> = streams.concat().into_iter().filter(|&t| t != 0xFF).collect();
    agree(dir.path(), TokenWidth::U8, 254, 128, all, true, 6);
}
