//! Corpus formats, bad input and atomic writes, through the `ibid` binary as a user runs it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use ibid::index::Index;

fn ibid(args: &[&str]) -> Output {
    Command::new(ibid_bin()).args(args).output().unwrap()
}

fn ibid_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child =
        Command::new(ibid_bin()).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> serde_json::Value {
    assert!(o.status.success(), "ibid failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Documents of an index, in order, as text (bytes tokenizer).
fn documents(index: &Path) -> Vec<String> {
    let index = Index::open(index).unwrap();
    let mut docs = Vec::new();
    for shard in &index.shards {
        let bytes = shard.tokenized.bytes();
        for d in 0..shard.documents() {
            let start = shard.doc_offset(d) as usize + 1;
            let end = if d + 1 < shard.documents() { shard.doc_offset(d + 1) as usize } else { bytes.len() };
            docs.push(String::from_utf8(bytes[start..end].to_vec()).unwrap());
        }
    }
    docs
}

fn metadata(index: &Path) -> Vec<serde_json::Value> {
    let index = Index::open(index).unwrap();
    let shard = &index.shards[0];
    (0..shard.documents()).map(|d| serde_json::from_slice(shard.metadata_line(d).unwrap()).unwrap()).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn no_leftovers(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".ibid-")), "temporary folders left behind: {names:?}");
}

const JSONL: &str = "{\"text\":\"first doc\",\"id\":1}\n\n{\"id\":2,\"text\":\"second\"}\n";

#[test]
fn every_format_and_compression_reads_the_same_documents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.jsonl"), JSONL).unwrap();
    std::fs::write(d.join("b.jsonl.gz"), gzip(JSONL.as_bytes())).unwrap();
    std::fs::write(d.join("c.jsonl.zst"), zstd::encode_all(JSONL.as_bytes(), 3).unwrap()).unwrap();
    std::fs::write(d.join("d.txt"), "plain text file\nwith two lines").unwrap();
    std::fs::write(d.join("e.txt.gz"), gzip("gzipped text".as_bytes())).unwrap();
    std::fs::write(d.join("f.md.zst"), zstd::encode_all("zstd text".as_bytes(), 3).unwrap()).unwrap();
    let out = d.join("idx");
    let report = ok(ibid(&[
        "build",
        p(&d.join("a.jsonl")),
        p(&d.join("b.jsonl.gz")),
        p(&d.join("c.jsonl.zst")),
        p(&d.join("d.txt")),
        p(&d.join("e.txt.gz")),
        p(&d.join("f.md.zst")),
        "-o",
        p(&out),
        "-q",
    ]));
    assert_eq!(report["documents"], 9);
    assert_eq!(report["skipped"]["empty"], 0);
    let docs = documents(&out);
    let jsonl_docs = ["first doc", "second"];
    assert_eq!(docs[0..2], jsonl_docs);
    assert_eq!(docs[2..4], jsonl_docs);
    assert_eq!(docs[4..6], jsonl_docs);
    assert_eq!(docs[6..], ["plain text file\nwith two lines", "gzipped text", "zstd text"]);
    let meta = metadata(&out);
    assert_eq!(meta[0], serde_json::json!({"path": p(&d.join("a.jsonl")), "linenum": 0, "metadata": {"id": 1}}));
    assert_eq!(meta[1]["linenum"], 2, "blank lines keep line numbers");
    assert_eq!(meta[6]["metadata"], serde_json::json!({}));
    let verified = ok(ibid(&["verify", p(&out), "--deep"]));
    assert_eq!(verified["ok"], true);
}

#[test]
fn folders_are_walked_in_name_order_and_stdin_reads() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(corpus.join("sub")).unwrap();
    std::fs::create_dir_all(corpus.join(".hidden")).unwrap();
    std::fs::write(corpus.join("b.txt"), "bee").unwrap();
    std::fs::write(corpus.join("a.txt"), "ay").unwrap();
    std::fs::write(corpus.join("sub/c.jsonl"), "{\"text\":\"sea\"}\n").unwrap();
    std::fs::write(corpus.join(".hidden/x.txt"), "hidden").unwrap();
    let out = dir.path().join("idx");
    ok(ibid(&["build", p(&corpus), "-o", p(&out), "-q"]));
    assert_eq!(documents(&out), ["ay", "bee", "sea"]);
    assert_eq!(metadata(&out)[2]["path"], "sub/c.jsonl");

    let out2 = dir.path().join("stdin-idx");
    ok(ibid_stdin(&["build", "-", "--format", "jsonl", "-o", p(&out2), "-q"], JSONL.as_bytes()));
    assert_eq!(documents(&out2), ["first doc", "second"]);
    let out3 = dir.path().join("stdin-text");
    ok(ibid_stdin(&["build", "-", "-o", p(&out3), "-q"], b"one document from stdin"));
    assert_eq!(documents(&out3), ["one document from stdin"]);
}

#[test]
fn text_field_option_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.jsonl");
    std::fs::write(&f, "{\"body\":\"hello\",\"url\":\"u\"}\n").unwrap();
    let out = dir.path().join("idx");
    ok(ibid(&["build", p(&f), "--text-field", "body", "-o", p(&out), "-q"]));
    assert_eq!(documents(&out), ["hello"]);
    assert_eq!(metadata(&out)[0]["metadata"], serde_json::json!({"url": "u"}));
}

/// Each bad input: a clear error naming file and line, no index and no temporary folder left.
#[test]
fn bad_input_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad.jsonl", b"{\"text\":\"ok\"}\n{not json\n".to_vec(), "bad.jsonl:2: not valid JSON"),
        ("nofield.jsonl", b"{\"text\":\"ok\"}\n{\"body\":\"x\"}\n".to_vec(), "nofield.jsonl:2: no field \"text\""),
        ("num.jsonl", b"{\"text\":5}\n".to_vec(), "num.jsonl:1: field \"text\" is not a string but a number"),
        ("latin1.txt", b"caf\xe9".to_vec(), "latin1.txt: invalid UTF-8 at byte 3"),
        ("badutf.jsonl", b"{\"text\":\"caf\xe9\"}\n".to_vec(), "badutf.jsonl:1: not valid JSON"),
        ("broken.gz", b"\x1f\x8b\x08\x00garbage".to_vec(), "broken.gz"),
        ("empty.txt", b"".to_vec(), "the corpus has no documents"),
    ];
    for (name, content, expected) in cases {
        let f = d.join(name);
        std::fs::write(&f, content).unwrap();
        let out = d.join(format!("idx-{name}"));
        let o = ibid(&["build", p(&f), "-o", p(&out), "-q"]);
        assert!(!o.status.success(), "{name} was accepted");
        let err = stderr(&o);
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(!out.exists(), "{name}: an index was left at {}", out.display());
        no_leftovers(d);
    }
    let missing = ibid(&["build", p(&d.join("nope.txt")), "-o", p(&d.join("i")), "-q"]);
    assert!(stderr(&missing).contains("nope.txt") && !missing.status.success());
    let not_model =
        ibid(&["build", p(&d.join("bad.jsonl")), "--tokenizer", &format!("gguf:{}", p(&d.join("bad.jsonl"))), "-o", p(&d.join("i")), "-q"]);
    assert!(stderr(&not_model).contains("not a usable GGUF model"), "{}", stderr(&not_model));
}

#[test]
fn skip_bad_counts_what_it_skips() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mixed.jsonl");
    std::fs::write(&f, b"{\"text\":\"good\"}\nnot json\n{\"text\":\"\"}\n{\"text\":\"also good\"}\n{\"x\":1}\n").unwrap();
    let out = dir.path().join("idx");
    let report = ok(ibid(&["build", p(&f), "--skip-bad", "-o", p(&out), "-q"]));
    assert_eq!(report["documents"], 2);
    assert_eq!(report["skipped"]["bad"], 2);
    assert_eq!(report["skipped"]["empty"], 1);
    let reasons = report["skipped"]["reasons"].to_string();
    assert!(reasons.contains("mixed.jsonl:2") && reasons.contains("mixed.jsonl:5"), "{reasons}");
    assert_eq!(documents(&out), ["good", "also good"]);
}

#[test]
fn existing_index_is_kept_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    std::fs::write(&a, "first").unwrap();
    std::fs::write(&b, "second").unwrap();
    let out = dir.path().join("idx");
    ok(ibid(&["build", p(&a), "-o", p(&out), "-q"]));
    let again = ibid(&["build", p(&b), "-o", p(&out), "-q"]);
    assert!(!again.status.success() && stderr(&again).contains("--force"));
    assert_eq!(documents(&out), ["first"]);
    // a failing forced build leaves the old index in place
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "nope").unwrap();
    assert!(!ibid(&["build", p(&bad), "-o", p(&out), "--force", "-q"]).status.success());
    assert_eq!(documents(&out), ["first"]);
    ok(ibid(&["build", p(&b), "-o", p(&out), "--force", "-q"]));
    assert_eq!(documents(&out), ["second"]);
    no_leftovers(dir.path());
    // a folder that is not an index is never replaced
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), "keep me").unwrap();
    let o = ibid(&["build", p(&b), "-o", p(&precious), "--force", "-q"]);
    assert!(!o.status.success() && stderr(&o).contains("refusing"));
    assert!(precious.join("notes.txt").exists());
    // nor one that looks like an index but holds a user's file too (it was replaced whole)
    for decoy in ["ibid.json", "tokenized.0"] {
        std::fs::write(precious.join(decoy), "{}").unwrap();
        let o = ibid(&["build", p(&b), "-o", p(&precious), "--force", "-q"]);
        assert!(!o.status.success() && stderr(&o).contains("refusing"), "{decoy}: {}", stderr(&o));
        assert_eq!(std::fs::read_to_string(precious.join("notes.txt")).unwrap(), "keep me");
        std::fs::remove_file(precious.join(decoy)).unwrap();
    }
    // an index with its recycling matrix beside it is replaced; a user's file in it stops that
    std::fs::write(out.join("recycle-model.gguf-1.bin"), "matrix").unwrap();
    ok(ibid(&["build", p(&a), "-o", p(&out), "--force", "-q"]));
    assert_eq!(documents(&out), ["first"]);
    std::fs::write(out.join("my-notes.md"), "mine").unwrap();
    let o = ibid(&["build", p(&b), "-o", p(&out), "--force", "-q"]);
    assert!(!o.status.success() && stderr(&o).contains("refusing"), "{}", stderr(&o));
    assert_eq!(
        (documents(&out), std::fs::read_to_string(out.join("my-notes.md")).unwrap()),
        (vec!["first".to_string()], "mine".to_string())
    );
}

fn built(dir: &Path) -> PathBuf {
    let f = dir.join("c.jsonl");
    let lines: String = (0..50).map(|i| format!("{{\"text\":\"document number {i} says hello\"}}\n")).collect();
    std::fs::write(&f, lines).unwrap();
    let out = dir.join("idx");
    ok(ibid(&["build", p(&f), "-o", p(&out), "-q", "--shard-tokens", "700"]));
    out
}

#[test]
fn corrupt_or_truncated_indexes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = built(dir.path());
    let info = ok(ibid(&["info", p(&good)]));
    assert!(info["shards"].as_array().unwrap().len() >= 2);
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    let check_open_fails = |idx: &Path, expected: &str| {
        let o = ibid(&["count", p(idx), "hello"]);
        assert!(!o.status.success(), "{} opened", idx.display());
        assert!(stderr(&o).contains(expected), "expected {expected:?} in {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    };

    let t = copy("truncated-table");
    let f = std::fs::OpenOptions::new().write(true).open(t.join("table.1")).unwrap();
    f.set_len(f.metadata().unwrap().len() - 1).unwrap();
    check_open_fails(&t, "table.1");

    let t = copy("truncated-tokens");
    let f = std::fs::OpenOptions::new().write(true).open(t.join("tokenized.0")).unwrap();
    f.set_len(10).unwrap();
    check_open_fails(&t, "tokenized.0");

    let t = copy("missing");
    std::fs::remove_file(t.join("offset.1")).unwrap();
    check_open_fails(&t, "offset.1 is missing");

    let t = copy("bad-manifest");
    std::fs::write(t.join("ibid.json"), "{\"format\": 3").unwrap();
    check_open_fails(&t, "unreadable manifest");

    let t = copy("bad-offsets");
    let mut off = std::fs::read(t.join("offset.0")).unwrap();
    off[8] ^= 0x01;
    std::fs::write(t.join("offset.0"), off).unwrap();
    check_open_fails(&t, "offset.0");

    // same size, different bytes: opens, but verify finds it
    let t = copy("flipped");
    let mut tok = std::fs::read(t.join("tokenized.0")).unwrap();
    tok[5] ^= 0x20;
    std::fs::write(t.join("tokenized.0"), tok).unwrap();
    let o = ibid(&["verify", p(&t)]);
    assert!(!o.status.success() && stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));

    let t = copy("bad-pointer");
    let mut table = std::fs::read(t.join("table.0")).unwrap();
    table.swap(0, 2);
    table[0] = 0xFF;
    std::fs::write(t.join("table.0"), &table).unwrap();
    std::fs::remove_file(t.join("ibid.json")).unwrap();
    let o = ibid(&["verify", p(&t), "--token-width", "1"]);
    assert!(!o.status.success() && stderr(&o).contains("table.0"), "{}", stderr(&o));

    let v = ok(ibid(&["verify", p(&good), "--deep"]));
    assert_eq!(v["report"]["checksums"], true);

    // What verify passed before: a manifest that leaves a file's checksum out (the file was
    // skipped, yet "checksums": true), or names a file the shard lacks; metadata offsets past the
    // metadata or out of order (with checksums that match them); a bytes tokenizer claimed for
    // 4-byte tokens (every text query counted 0).
    let edit_manifest = |t: &Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("ibid.json")).unwrap()).unwrap();
        edit(&mut m);
        std::fs::write(t.join("ibid.json"), serde_json::to_string_pretty(&m).unwrap()).unwrap();
    };
    let t = copy("unlisted");
    edit_manifest(&t, &|m| {
        m["shards"][0]["files"].as_object_mut().unwrap().remove("offset.0");
    });
    let o = ibid(&["verify", p(&t)]);
    assert!(!o.status.success() && stderr(&o).contains("no checksum"), "{}", stderr(&o));
    let t = copy("phantom");
    edit_manifest(&t, &|m| {
        m["shards"][0]["files"]["metadata.7"] = serde_json::json!({"bytes": 1, "xxh3": "0000000000000000"});
    });
    let o = ibid(&["verify", p(&t)]);
    assert!(!o.status.success() && stderr(&o).contains("metadata.7"), "{}", stderr(&o));
    for (name, at, value) in [("metaoff-past-end", 1usize, u64::MAX / 2), ("metaoff-backwards", 2, 0)] {
        let t = copy(name);
        let mut off = std::fs::read(t.join("metaoff.0")).unwrap();
        off[at * 8..at * 8 + 8].copy_from_slice(&value.to_le_bytes());
        std::fs::write(t.join("metaoff.0"), &off).unwrap();
        let digest = serde_json::to_value(ibid::index::digest_of(&off)).unwrap();
        edit_manifest(&t, &|m| m["shards"][0]["files"]["metaoff.0"] = digest.clone());
        let o = ibid(&["verify", p(&t), "--deep"]);
        assert!(!o.status.success() && stderr(&o).contains("metaoff.0"), "{name}: {}", stderr(&o));
    }
    let t = copy("bytes-on-u32");
    edit_manifest(&t, &|m| m["token_width"] = serde_json::json!(4));
    check_open_fails(&t, "does not fit");
}

#[test]
fn manifest_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let good = built(dir.path());
    let manifest = ibid::index::Manifest::read(&good).unwrap();
    let text = std::fs::read_to_string(good.join("ibid.json")).unwrap();
    assert_eq!(manifest.to_json(), text);
    let back: ibid::index::Manifest = serde_json::from_str(&text).unwrap();
    assert_eq!(back, manifest);
    assert_eq!(manifest.documents, 50);
    assert_eq!(manifest.tokenizer.kind, "bytes");
    assert_eq!(manifest.shards.iter().map(|s| s.tokens).sum::<u64>(), manifest.tokens);
}

#[test]
fn a_reader_that_leaves_early_is_not_an_error() {
    // `ibid info … | head`: the pipe's reader is gone before ibid writes
    let dir = tempfile::tempdir().unwrap();
    let idx = built(dir.path());
    for args in [vec!["info", p(&idx)], vec!["count", p(&idx), "hello", "--format", "table"], vec!["count", p(&idx), "hello"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(ibid_bin()).args(&args).stdout(writer).stderr(Stdio::piped()).output().unwrap();
        assert!(o.status.success(), "{args:?}: {:?} {}", o.status, stderr(&o));
        assert!(stderr(&o).is_empty(), "{args:?}: {}", stderr(&o));
    }
    // other failures still are errors
    let o = ibid(&["info", p(&dir.path().join("missing"))]);
    assert!(!o.status.success());
}

/// Numeric flags outside their range are refused by the parser (status 2, a message naming the
/// flag), before a model, an index or a thread pool sees them: `--ctx 64` made llama.cpp assert,
/// `--batch 1000000000` crashed it, `--threads 100000` spawned without end, `--shard-tokens 0`
/// was taken.
#[test]
fn numeric_flags_out_of_range_are_refused_before_anything_runs() {
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", "/nonexistent.gguf", "--prompt", "hi"];
        args.extend_from_slice(extra);
        ibid(&args)
    };
    for (out, flag) in [
        (gen(&["--ctx", "64"]), "--ctx"),
        (gen(&["--batch", "1000000000"]), "--batch"),
        (gen(&["--batch", "1"]), "--batch"),
        (ibid(&["--threads", "100000", "info", "/nonexistent"]), "--threads"),
        (ibid(&["--threads", "0", "info", "/nonexistent"]), "--threads"),
        (ibid(&["build", "/nonexistent", "--shard-tokens", "0"]), "--shard-tokens"),
    ] {
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
    }
    // a batch larger than the context is refused before the model is loaded
    let out = gen(&["--ctx", "256", "--batch", "512"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--batch 512 is larger than --ctx 256"), "{}", stderr(&out));
    // in range, the model's absence is what fails
    let out = gen(&["--ctx", "128", "--batch", "128", "--threads", "1"]);
    assert!(stderr(&out).contains("cannot load the model"), "{}", stderr(&out));
}

/// Whitespace is a query like any text (indentation, leading-space tokens): only an empty query
/// is refused. They were trimmed away and refused as empty.
#[test]
fn whitespace_is_a_query() {
    let dir = tempfile::tempdir().unwrap();
    let text = "def f(x):\n    if x:\n        return x\n    return 0\n";
    let f = dir.path().join("code.txt");
    std::fs::write(&f, text).unwrap();
    let out = dir.path().join("idx");
    ok(ibid(&["build", p(&f), "-o", p(&out), "-q"]));
    let brute = |q: &str| text.as_bytes().windows(q.len()).filter(|w| *w == q.as_bytes()).count() as u64;
    for q in ["    ", "\n    ", " return", "        return x"] {
        let v = ok(ibid(&["count", p(&out), q]));
        assert_eq!(v["count"].as_u64(), Some(brute(q)), "{q:?}: {v}");
        assert!(brute(q) > 0, "{q:?}");
    }
    // a CNF term is what lies between the operators, its spaces included
    let v = ok(ibid(&["cnf", p(&out), " return AND x"]));
    assert!(v["count"].as_u64().unwrap() > 0, "{v}");
    let o = ibid(&["count", p(&out), ""]);
    assert!(!o.status.success() && stderr(&o).contains("empty"), "{}", stderr(&o));
}

/// Batch mode answers every line: a line of invalid UTF-8 gets one error line and the lines after
/// it are answered (the first bad line ended the run, every later line unanswered).
#[test]
fn batch_mode_answers_past_a_line_of_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.txt");
    std::fs::write(&f, "hello world, hello again").unwrap();
    let out = dir.path().join("idx");
    ok(ibid(&["build", p(&f), "-o", p(&out), "-q"]));
    let good = br#"{"query_type": "count", "query": "hello"}"#;
    let mut input = Vec::new();
    for line in [&good[..], b"{\"query\": \"\xff\xfe\"}", b"", b"not json", &good[..]] {
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let o = ibid_stdin(&["query", p(&out)], &input);
    assert!(o.status.success(), "{}", stderr(&o));
    let answers: Vec<serde_json::Value> = String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert_eq!((answers[0]["count"].as_u64(), answers[3]["count"].as_u64()), (Some(2), Some(2)), "{answers:?}");
    assert!(answers[1]["error"].as_str().unwrap().contains("line 2 is not valid UTF-8"), "{answers:?}");
    assert!(answers[2]["error"].is_string(), "{answers:?}");
}

/// A build stopped by SIGINT, SIGTERM or SIGHUP removes its hidden staging folder, and the next
/// build beside it removes one that a killed build (SIGKILL) left; a live build's is kept.
#[test]
fn interrupted_builds_leave_no_staging_folder() {
    let dir = tempfile::tempdir().unwrap();
    // about 24 MB of real-looking text: long enough to be stopped mid-build
    let f = dir.path().join("big.txt");
    let line = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n";
    let text: String = (0..280_000).map(|i| format!("{i} {line}")).collect();
    std::fs::write(&f, text).unwrap();
    let staging = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".ibid-build-"))
            .collect()
    };
    for (signal, status) in [("-INT", 130), ("-TERM", 143), ("-HUP", 129)] {
        let out = dir.path().join("idx");
        let mut child = Command::new(ibid_bin()).args(["build", p(&f), "-o", p(&out), "-q"]).spawn().unwrap();
        // wait until its staging folder exists, then stop it
        let started = std::time::Instant::now();
        while staging(dir.path()).is_empty() && started.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!staging(dir.path()).is_empty(), "no staging folder appeared");
        assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap().success());
        let code = child.wait().unwrap().code();
        if code == Some(0) {
            // the build won the race; nothing to check this time
            std::fs::remove_dir_all(&out).unwrap();
            continue;
        }
        assert_eq!(code, Some(status), "{signal}");
        assert_eq!(staging(dir.path()), Vec::<String>::new(), "{signal}");
        assert!(!out.exists(), "{signal}");
    }
    // what a SIGKILLed build leaves (its process gone), and one of a live process (this one)
    let dead = dir.path().join(".ibid-build-4000000000-abc");
    let live = dir.path().join(format!(".ibid-build-{}-abc", std::process::id()));
    for d in [&dead, &live] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("tokenized.0"), "partial").unwrap();
    }
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "hello").unwrap();
    ok(ibid(&["build", p(&small), "-o", p(&dir.path().join("idx2")), "-q"]));
    assert!(!dead.exists(), "the dead build's staging folder was kept");
    assert!(live.exists(), "a live build's staging folder was removed");
}

/// A FIFO where an index file should be is refused at once: opening it for reading waited for a
/// writer forever (`ibid info` hung).
#[test]
fn a_fifo_in_place_of_an_index_file_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let good = built(dir.path());
    for name in ["ibid.json", "tokenized.0"] {
        let t = dir.path().join(format!("fifo-{name}"));
        std::fs::create_dir(&t).unwrap();
        for e in std::fs::read_dir(&good).unwrap().flatten() {
            std::fs::copy(e.path(), t.join(e.file_name())).unwrap();
        }
        std::fs::remove_file(t.join(name)).unwrap();
        assert!(Command::new("mkfifo").arg(t.join(name)).status().unwrap().success());
        let mut child = Command::new(ibid_bin()).args(["info", p(&t)]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed().as_secs() > 30 {
                let _ = child.kill();
                panic!("ibid info waited on the FIFO {name}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success() && err.contains("not a regular file") && err.contains(name), "{name}: {err}");
    }
}

/// Fetching a document by number needs no tokenizer: with the index's model gone, `docs --doc-ix`
/// still answers (token ids, no text); a text query still says it needs the tokenizer.
#[test]
fn a_document_by_number_needs_no_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let good = built(dir.path());
    let path = good.join("ibid.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["tokenizer"]["kind"] = serde_json::json!("gguf");
    m["tokenizer"]["model_file"] = serde_json::json!("gone.gguf");
    m["tokenizer"]["model_path"] = serde_json::json!("/nonexistent/gone.gguf");
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let v = ok(ibid(&["docs", p(&good), "--doc-ix", "3"]));
    assert_eq!(v["doc_ix"], 3, "{v}");
    assert!(!v["token_ids"].as_array().unwrap().is_empty(), "{v}");
    assert!(v.get("text").is_none(), "{v}");
    let o = ibid(&["count", p(&good), "hello"]);
    assert!(!o.status.success() && stderr(&o).contains("tokenizer"), "{}", stderr(&o));
}
