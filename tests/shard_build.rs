//! Sharded builds end to end: the same parts built one by one on the command line
//! (`ibid build --shard i/N`, the shell-loop or Slurm-array way), by `scripts/shard_build.py` as
//! local processes, and as Ray tasks on a Ray cluster of this machine alone that the script
//! starts (one part made to fail once, so the retry is exercised), are byte-identical
//! file for file, parts and merged index alike; and the merged index answers as a single build
//! of the same corpus.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ibid::index::Index;
use serde_json::Value;

/// Real text: two packages of the Python standard library, one document per file.
fn corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    for package in ["json", "email"] {
        let from = stdlib().join(package);
        let to = corpus.join(package);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "py") {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    corpus
}

fn ibid(args: &[&str], cwd: &Path) -> Value {
    let out = Command::new(ibid_bin()).args(args).current_dir(cwd).output().unwrap();
    assert!(out.status.success(), "ibid {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn shard_build(args: &[&str], cwd: &Path) -> Value {
    let out = Command::new("python3")
        .arg(repo().join("scripts/shard_build.py"))
        .args(["--ibid", ibid_bin()])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(out.status.success(), "shard_build.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every regular file under `dir`, by relative path, with its bytes (attempt counters aside).
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.to_string_lossy().ends_with(".attempts") {
                files.push((path.strip_prefix(dir).unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    assert_eq!(
        ta.iter().map(|f| &f.0).collect::<Vec<_>>(),
        tb.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "{} and {} hold other files",
        a.display(),
        b.display()
    );
    for ((name, x), (_, y)) in ta.iter().zip(&tb) {
        assert!(x == y, "{name} differs between {} and {}", a.display(), b.display());
    }
    assert!(ta.len() > 10, "a real index: {} files", ta.len());
}

#[test]
fn parts_built_anywhere_are_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    corpus(cwd);
    let build = ["corpus", "--shard-tokens", "30000"];

    // One by one on the command line, then merged: the shell-loop way.
    let mut parts = Vec::new();
    for i in 0..3 {
        let out = format!("loop.parts/part-{i}");
        let shard = format!("{i}/3");
        let report = ibid(&[&["build"][..], &build, &["--shard", &shard, "-o", &out, "--quiet"]].concat(), cwd);
        assert_eq!(report["part"]["index"], i);
        parts.push(out);
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let merged = ibid(&[&["merge"][..], &parts, &["-o", "loop", "--quiet"]].concat(), cwd);
    assert_eq!(merged["parts"], 3);

    // The script, as local processes and as Ray tasks (part 1 fails its first attempt).
    let local = shard_build(&[&["--parts", "3", "--jobs", "2", "--keep-parts", "-o", "local", "--"][..], &build].concat(), cwd);
    let ray = shard_build(
        &[&["--backend", "ray", "--local-cpus", "2", "--parts", "3", "--fail-once", "1", "--keep-parts", "-o", "ray", "--"][..], &build]
            .concat(),
        cwd,
    );
    let attempts: Vec<u64> = ray["part_reports"].as_array().unwrap().iter().map(|r| r["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, vec![1, 2, 1], "the failed part was retried once, the others ran once");
    assert_eq!(local["documents"], merged["documents"]);

    for name in ["local", "ray"] {
        assert_same_tree(&cwd.join("loop"), &cwd.join(name));
        assert_same_tree(&cwd.join("loop.parts"), &cwd.join(format!("{name}.parts")));
    }

    // The merged index answers as one build of the corpus: n-grams of every file, counted.
    ibid(&[&["build"][..], &build[..1], &["-o", "whole", "--quiet"]].concat(), cwd);
    let (whole, merged) = (Index::open(cwd.join("whole")).unwrap(), Index::open(cwd.join("ray")).unwrap());
    assert_eq!(whole.manifest.as_ref().unwrap().tokens, merged.manifest.as_ref().unwrap().tokens);
    assert_eq!(whole.manifest.as_ref().unwrap().documents, merged.manifest.as_ref().unwrap().documents);
    let mut checked = 0;
    for entry in walk(&cwd.join("corpus")) {
        let text = std::fs::read(&entry).unwrap();
        for start in (0..text.len().saturating_sub(12)).step_by(997) {
            for len in [1usize, 4, 12] {
                let ngram: Vec<u32> = text[start..start + len].iter().map(|&b| u32::from(b)).collect();
                assert_eq!(merged.count(&ngram).unwrap(), whole.count(&ngram).unwrap(), "count of {ngram:?}");
                let (context, last) = ngram.split_at(len - 1);
                assert_eq!(merged.infgram_prob(context, last[0]).unwrap(), whole.infgram_prob(context, last[0]).unwrap());
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked} n-grams checked");
    let verify = ibid(&["verify", "ray", "--deep"], cwd);
    assert_eq!(verify["ok"], true);
}

/// Split by file: each part reads only its files, and the merged index still holds every
/// document once.
#[test]
fn a_split_by_file_holds_every_document_once() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    corpus(cwd);
    let report = shard_build(&["--parts", "4", "--jobs", "2", "-o", "by-file", "--", "corpus", "--split", "files"], cwd);
    let files = walk(&cwd.join("corpus")).len() as u64;
    assert_eq!(report["documents"].as_u64(), Some(files));
    let per_part: Vec<u64> = report["part_reports"].as_array().unwrap().iter().map(|r| r["documents"].as_u64().unwrap()).collect();
    assert_eq!(per_part.iter().sum::<u64>(), files);
    assert!(per_part.iter().all(|&d| d > 0), "every part has files: {per_part:?}");
    assert!(!cwd.join("by-file.parts").exists(), "the parts are removed after the merge unless kept");
    let index = Index::open(cwd.join("by-file")).unwrap();
    let docs: std::collections::BTreeSet<String> = (0..files).map(|ix| index.doc_by_ix(ix, 0).unwrap().metadata).collect();
    assert_eq!(docs.len() as u64, files, "no document twice");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
