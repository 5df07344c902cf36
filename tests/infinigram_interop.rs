//! Interoperability with PyPI `infini-gram==2.6.0` (installed by scripts/setup.sh), driven through
//! scripts/infinigram.py: identical suffix arrays from identical token files, and each tool reads
//! the other's index.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use ibid::index::Index;
use ibid::tokenize::TokenWidth;

/// Ask infini-gram's engine for counts.
fn engine_counts(dir: &Path, width: usize, queries: &[Vec<u32>]) -> Vec<u64> {
    let mut child = infinigram(&["query", dir.to_str().unwrap(), "--token-width", &width.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for q in queries {
        input.push_str(&serde_json::json!({"op": "count", "ids": q}).to_string());
        input.push('\n');
    }
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "engine failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["count"].as_u64().unwrap_or_else(|| panic!("no count in {l}"))
        })
        .collect()
}

fn sample_queries(streams: &[Vec<u32>], n: usize, absent: Vec<u32>) -> Vec<Vec<u32>> {
    let all: Vec<u32> = streams.concat().into_iter().filter(|&t| t != 0xFFFF && t != 0xFF).collect();
    (0..n)
        .map(|i| {
            let start = (i * 7919) % (all.len() - 12);
            all[start..start + 1 + i % 10].to_vec()
        })
        .chain([absent, vec![]])
        .collect()
}

#[test]
fn u16_tables_are_byte_identical_and_each_tool_reads_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let width = TokenWidth::U16;
    let streams = vec![write_shard(&src, 0, width, &u16_docs(7, 60)), write_shard(&src, 1, width, &u16_docs(11, 25))];
    let ours = dir.path().join("ibid");
    let theirs = dir.path().join("infini-gram");
    copy_dir(&src, &ours);
    copy_dir(&src, &theirs);
    run(Command::new(ibid_bin()).args(["table", ours.to_str().unwrap(), "--token-width", "2"]));
    run(&mut infinigram(&["index", theirs.to_str().unwrap(), "--token-width", "2"]));
    for shard in 0..2 {
        let a = std::fs::read(ours.join(format!("table.{shard}"))).unwrap();
        let b = std::fs::read(theirs.join(format!("table.{shard}"))).unwrap();
        assert_eq!(a.len(), b.len());
        assert!(a == b, "table.{shard} differs between ibid and infini-gram");
    }

    // ibid opens infini-gram's index (no manifest; width inferred from file sizes)
    let index = Index::open(&theirs).unwrap();
    assert_eq!(index.width, TokenWidth::U16);
    assert!(index.manifest.is_none());
    index.verify(true).unwrap();
    let queries = sample_queries(&streams, 200, vec![12_345, 54_321]);
    let engine = engine_counts(&theirs, 2, &queries);
    for (q, expected) in queries.iter().zip(&engine) {
        let brute: u64 = streams.iter().map(|s| brute_count(s, q)).sum();
        assert_eq!(brute, *expected, "engine vs brute force for {q:?}");
        assert_eq!(index.count(q).unwrap(), *expected, "ibid vs engine for {q:?}");
    }
    let info = run(Command::new(ibid_bin()).args(["info", theirs.to_str().unwrap()]));
    assert!(info.contains("no manifest"), "{info}");
}

#[test]
fn infini_gram_reads_an_index_ibid_built_from_text() {
    let dir = tempfile::tempdir().unwrap();
    let corpus: PathBuf = dir.path().join("corpus.jsonl");
    let stdlib = stdlib();
    let mut lines = String::new();
    for f in ["textwrap.py", "shlex.py", "fnmatch.py", "glob.py"] {
        let text = std::fs::read_to_string(stdlib.join(f)).unwrap();
        lines.push_str(&serde_json::json!({"text": text, "file": f}).to_string());
        lines.push('\n');
    }
    std::fs::write(&corpus, lines).unwrap();
    let ours = dir.path().join("idx");
    run(Command::new(ibid_bin()).args(["build", corpus.to_str().unwrap(), "-o", ours.to_str().unwrap(), "-q"]));

    // The same token file through infini-gram's indexer gives the same table.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    for f in ["tokenized.0", "offset.0"] {
        std::fs::copy(ours.join(f), theirs.join(f)).unwrap();
    }
    run(&mut infinigram(&["index", theirs.to_str().unwrap(), "--token-width", "1"]));
    assert!(std::fs::read(ours.join("table.0")).unwrap() == std::fs::read(theirs.join("table.0")).unwrap());

    // infini-gram's engine opens ibid's index (manifest and metadata beside it) and agrees.
    let index = Index::open(&ours).unwrap();
    let stream: Vec<u32> = index.shards[0].tokenized.bytes().iter().map(|&b| u32::from(b)).collect();
    let queries: Vec<Vec<u32>> = ["def ", "return", "import os\n", "    if not ", "pattern", "zzz-not-there", ""]
        .iter()
        .map(|q| q.bytes().map(u32::from).collect())
        .chain(sample_queries(std::slice::from_ref(&stream), 100, vec![0xFE, 0xFE]))
        .collect();
    let engine = engine_counts(&ours, 1, &queries);
    for (q, expected) in queries.iter().zip(&engine) {
        assert_eq!(index.count(q).unwrap(), *expected, "{q:?}");
        assert_eq!(brute_count(&stream, q), *expected);
    }
}
