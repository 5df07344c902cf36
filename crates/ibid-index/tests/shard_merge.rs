//! Sharded builds (`BuildOptions::part`, `--shard i/N`) and `merge`, against brute force and
//! against one build of the same corpus: every document lands in exactly one part, the merged
//! index counts every n-gram as brute force does and answers probability, next-token and
//! ∞-gram queries as the single build does, one part of one is the single build byte for byte,
//! and merges that would lose or double documents, or trust a damaged file, are refused.

// The helpers shared with the top-level tests call this crate by the facade's name.
extern crate ibid_index as ibid;

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ibid::error::Error;
use ibid::index::{self, BuildOptions, Index, Part, Split};
use ibid::tokenize::TokenWidth;
use proptest::prelude::*;

fn docs_strategy() -> impl Strategy<Value = Vec<Vec<u32>>> {
    let token = prop_oneof![6 => 0u32..5, 1 => 0u32..70_000];
    prop::collection::vec(prop::collection::vec(token, 1..30), 1..25)
}

/// The documents as JSONL files, `files` of them, documents dealt round-robin.
fn write_corpus(dir: &Path, docs: &[Vec<u32>], files: usize) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = (0..files).map(|f| dir.join(format!("corpus-{f}.jsonl"))).collect();
    let mut lines = vec![String::new(); files];
    for (i, d) in docs.iter().enumerate() {
        lines[i % files] += &(serde_json::json!({"text": IdTokenizer::encode(d)}).to_string() + "\n");
    }
    for (p, l) in paths.iter().zip(lines) {
        std::fs::write(p, l).unwrap();
    }
    paths
}

fn build(inputs: &[PathBuf], out: &Path, shard_tokens: u64, part: Option<Part>) -> Result<(), Error> {
    let mut options = BuildOptions::new(out);
    options.max_shard_tokens = Some(shard_tokens);
    options.threads = 1;
    options.part = part;
    index::build(inputs, &IdTokenizer::new(TokenWidth::U32), &options, &index::Quiet).map(|_| ())
}

/// Build parts 0..n (a part whose share is empty is left out, as a caller would) and merge them.
fn build_parts(dir: &Path, inputs: &[PathBuf], n: usize, split: Split, shard_tokens: u64) -> (Vec<PathBuf>, PathBuf) {
    let mut parts = Vec::new();
    for i in 0..n {
        let out = dir.join(format!("part-{i}"));
        match build(inputs, &out, shard_tokens, Some(Part { index: i, count: n, split })) {
            Ok(()) => parts.push(out),
            Err(Error::EmptyCorpus { .. }) => {}
            Err(e) => panic!("part {i}/{n}: {e}"),
        }
    }
    let merged = dir.join("merged");
    (parts, merged)
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Merged parts answer as brute force over all documents and as one build of them.
    #[test]
    fn merged_parts_answer_as_one_build(
        docs in docs_strategy(),
        n in 1usize..5,
        files in 1usize..5,
        by_file in any::<bool>(),
        shard_tokens in 8u64..200,
        probes in prop::collection::vec((any::<prop::sample::Index>(), 1usize..4), 12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let inputs = write_corpus(dir.path(), &docs, files);
        let whole = dir.path().join("whole");
        build(&inputs, &whole, shard_tokens, None).unwrap();
        let split = if by_file { Split::Files } else { Split::Documents };
        let (parts, merged) = build_parts(dir.path(), &inputs, n, split, shard_tokens);
        if parts.len() < n {
            // A part with nothing in it is an error of its own, so such a merge must be refused.
            prop_assert!(matches!(index::merge(&parts, &merged, false, &index::Quiet), Err(Error::Argument(_))));
            return Ok(());
        }
        let report = index::merge(&parts, &merged, false, &index::Quiet).unwrap();
        let (a, b) = (Index::open(&whole).unwrap(), Index::open(&merged).unwrap());
        prop_assert_eq!(report.documents, docs.len() as u64);
        prop_assert_eq!(a.manifest.as_ref().unwrap().tokens, b.manifest.as_ref().unwrap().tokens);
        prop_assert!(b.verify(true).is_ok(), "the merged index passes a deep check");
        let all: Vec<u32> = shard_stream(TokenWidth::U32, &docs);
        for (at, len) in &probes {
            let doc = &docs[at.index(docs.len())];
            let start = at.index(doc.len());
            let ngram = &doc[start..(start + len).min(doc.len())];
            prop_assert_eq!(b.count(ngram).unwrap(), brute_count(&all, ngram), "count of {:?}", ngram);
            let (context, last) = ngram.split_at(ngram.len() - 1);
            prop_assert_eq!(
                serde_json::to_value(b.prob(context, last[0]).unwrap()).unwrap(),
                serde_json::to_value(a.prob(context, last[0]).unwrap()).unwrap()
            );
            prop_assert_eq!(
                serde_json::to_value(b.ntd(ngram, 1000).unwrap()).unwrap(),
                serde_json::to_value(a.ntd(ngram, 1000).unwrap()).unwrap()
            );
            prop_assert_eq!(
                serde_json::to_value(b.infgram_ntd(ngram, 1000).unwrap()).unwrap(),
                serde_json::to_value(a.infgram_ntd(ngram, 1000).unwrap()).unwrap()
            );
        }
    }
}

/// Part 0 of 1, merged, is the single build: every file and the manifest, byte for byte.
#[test]
fn one_part_merged_is_the_single_build() {
    let dir = tempfile::tempdir().unwrap();
    let docs = u16_docs(7, 60);
    let inputs = write_corpus(dir.path(), &docs, 3);
    for split in [Split::Documents, Split::Files] {
        let whole = dir.path().join("whole");
        let part = dir.path().join("part");
        let merged = dir.path().join("merged");
        for d in [&whole, &part, &merged] {
            let _ = std::fs::remove_dir_all(d);
        }
        build(&inputs, &whole, 300, None).unwrap();
        build(&inputs, &part, 300, Some(Part { index: 0, count: 1, split })).unwrap();
        index::merge(&[part], &merged, false, &index::Quiet).unwrap();
        let (w, m) = (files_of(&whole), files_of(&merged));
        assert_eq!(w.iter().map(|f| &f.0).collect::<Vec<_>>(), m.iter().map(|f| &f.0).collect::<Vec<_>>());
        for ((name, a), (_, b)) in w.iter().zip(&m) {
            assert!(a == b, "{name} differs ({split:?})");
        }
        assert!(w.len() > 5, "several shards: {:?}", w.iter().map(|f| &f.0).collect::<Vec<_>>());
    }
}

/// A merge that would lose or double documents, mix builds, or trust a damaged file is refused,
/// and leaves no output behind.
#[test]
fn merges_that_would_lose_documents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let docs = u16_docs(11, 40);
    let inputs = write_corpus(dir.path(), &docs, 2);
    let (parts, merged) = build_parts(dir.path(), &inputs, 3, Split::Documents, 200);
    assert_eq!(parts.len(), 3);
    let refused = |given: &[PathBuf]| {
        let e = index::merge(given, &merged, false, &index::Quiet).unwrap_err();
        assert!(!merged.exists(), "nothing written for {e}");
        e.to_string()
    };
    assert!(refused(&parts[..2]).contains("part 2/3 is missing"));
    assert!(refused(&[parts[0].clone(), parts[1].clone(), parts[1].clone()]).contains("given twice"));
    // A part of another build (other inputs).
    let other = dir.path().join("other");
    build(&inputs[..1], &other, 200, Some(Part { index: 2, count: 3, split: Split::Documents })).unwrap();
    assert!(refused(&[parts[0].clone(), parts[1].clone(), other]).contains("different builds"));
    // A whole index among parts.
    let whole = dir.path().join("whole");
    build(&inputs, &whole, 200, None).unwrap();
    assert!(refused(&[parts[0].clone(), parts[1].clone(), parts[2].clone(), whole.clone()]).contains("cannot be merged together"));
    // The output is one of the parts.
    assert!(index::merge(&parts, &parts[0], true, &index::Quiet).unwrap_err().to_string().contains("both a part and the output"));
    // Another vocabulary.
    let u16_index = dir.path().join("u16");
    let mut options = BuildOptions::new(&u16_index);
    options.threads = 1;
    index::build(&inputs, &IdTokenizer::new(TokenWidth::U16), &options, &index::Quiet).unwrap();
    assert!(matches!(index::merge(&[whole.clone(), u16_index], &merged, false, &index::Quiet), Err(Error::TokenizerMismatch { .. })));
    assert!(!merged.exists());
    // A damaged file in a part: the checksum catches it.
    let table = parts[1].join("table.0");
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[3] ^= 0x40;
    std::fs::write(&table, bytes).unwrap();
    assert!(matches!(index::merge(&parts, &merged, false, &index::Quiet), Err(Error::Checksum { .. })));
    assert!(!merged.exists());
    // Parts given in any order merge in part order: the same index.
    let mut fixed = std::fs::read(&table).unwrap();
    fixed[3] ^= 0x40;
    std::fs::write(&table, fixed).unwrap();
    let reversed = dir.path().join("reversed");
    index::merge(&parts, &merged, false, &index::Quiet).unwrap();
    index::merge(&[parts[2].clone(), parts[0].clone(), parts[1].clone()], &reversed, false, &index::Quiet).unwrap();
    assert_eq!(files_of(&merged), files_of(&reversed));
    // An existing output is kept unless forced.
    assert!(matches!(index::merge(&parts, &merged, false, &index::Quiet), Err(Error::IndexExists(_))));
    index::merge(&parts, &merged, true, &index::Quiet).unwrap();
}

/// Whole indexes of one vocabulary concatenate: counts add up.
#[test]
fn whole_indexes_concatenate() {
    let dir = tempfile::tempdir().unwrap();
    let docs = u16_docs(3, 30);
    let (first, second) = docs.split_at(12);
    let a = write_corpus(&dir.path().join(""), first, 1);
    let a_idx = dir.path().join("a");
    build(&a, &a_idx, 500, None).unwrap();
    let b_dir = dir.path().join("b-corpus");
    std::fs::create_dir(&b_dir).unwrap();
    let b = write_corpus(&b_dir, second, 1);
    let b_idx = dir.path().join("b");
    build(&b, &b_idx, 500, None).unwrap();
    let merged = dir.path().join("ab");
    index::merge(&[a_idx, b_idx], &merged, false, &index::Quiet).unwrap();
    let index = Index::open(&merged).unwrap();
    let all = shard_stream(TokenWidth::U32, &docs);
    for d in &docs {
        let ngram = &d[..d.len().min(2)];
        assert_eq!(index.count(ngram).unwrap(), brute_count(&all, ngram));
    }
    assert_eq!(index.manifest.as_ref().unwrap().documents, docs.len() as u64);
}
