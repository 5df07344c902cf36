//! Property tests of the whole build pipeline against brute force: random token arrays of every
//! width, with document separators, split over several shards.

// The helpers shared with the top-level tests call this crate by the facade's name.
extern crate ibid_index as ibid;

mod common;

use common::*;
use ibid::index::{self, BuildOptions, Index};
use ibid::tokenize::TokenWidth;
use proptest::prelude::*;

fn width_strategy() -> impl Strategy<Value = TokenWidth> {
    prop_oneof![Just(TokenWidth::U8), Just(TokenWidth::U16), Just(TokenWidth::U32)]
}

/// Small alphabets make repeats (and long common prefixes) likely; ids near the width's top and
/// with bytes that differ in order between little- and big-endian test the byte order.
fn docs_strategy(width: TokenWidth) -> impl Strategy<Value = Vec<Vec<u32>>> {
    let top = width.separator() - 1;
    let token = prop_oneof![
        4 => 0u32..4,
        2 => Just(top),
        1 => Just(255u32.min(top)),
        1 => Just(256u32.min(top)),
        1 => Just(0x0102u32.min(top)),
        1 => Just(0x0201u32.min(top)),
        1 => 0u32..=top,
    ];
    prop::collection::vec(prop::collection::vec(token, 1..40), 1..12)
}

fn write_corpus(dir: &std::path::Path, docs: &[Vec<u32>]) -> std::path::PathBuf {
    let corpus = dir.join("corpus.jsonl");
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({"text": IdTokenizer::encode(d)}).to_string()).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    corpus
}

fn build_at(width: TokenWidth, corpus: &std::path::Path, out: std::path::PathBuf, shard_tokens: u64) -> Index {
    let mut options = BuildOptions::new(&out);
    options.max_shard_tokens = Some(shard_tokens);
    options.threads = 1;
    index::build(&[corpus.to_path_buf()], &IdTokenizer::new(width), &options, &index::Quiet).unwrap();
    Index::open(out).unwrap()
}

fn build_docs(width: TokenWidth, docs: &[Vec<u32>], shard_tokens: u64) -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), docs);
    let index = build_at(width, &corpus, dir.path().join("idx"), shard_tokens);
    (dir, index)
}

/// Documents as the builder packs them into shards: a shard closes before a document that would
/// overflow it.
fn expected_shards(docs: &[Vec<u32>], cap: u64) -> Vec<Vec<Vec<u32>>> {
    let mut shards: Vec<Vec<Vec<u32>>> = vec![vec![]];
    let mut used = 0u64;
    for d in docs {
        let need = d.len() as u64 + 1;
        if used > 0 && used + need > cap {
            shards.push(vec![]);
            used = 0;
        }
        shards.last_mut().unwrap().push(d.clone());
        used += need;
    }
    shards
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn suffix_array_is_the_sorted_permutation_of_all_suffixes(
        (width, docs) in width_strategy().prop_flat_map(|w| (Just(w), docs_strategy(w))),
        shard_tokens in 8u64..200,
    ) {
        let (_dir, index) = build_docs(width, &docs, shard_tokens);
        let shards = expected_shards(&docs, shard_tokens);
        prop_assert_eq!(index.shards.len(), shards.len());
        for (shard, docs) in index.shards.iter().zip(&shards) {
            let stream = shard_stream(width, docs);
            let bytes = le_bytes(width, &stream);
            prop_assert_eq!(shard.tokenized.bytes(), &bytes[..]);
            let table = read_table(shard.table.bytes(), shard.pointer_width);
            prop_assert_eq!(table, brute_table(&bytes, width.bytes()));
            prop_assert_eq!(shard.documents(), docs.len() as u64);
        }
        index.verify(true).unwrap();
    }

    #[test]
    fn count_matches_brute_force(
        (width, docs) in width_strategy().prop_flat_map(|w| (Just(w), docs_strategy(w))),
        shard_tokens in 8u64..200,
        picks in prop::collection::vec((any::<prop::sample::Index>(), 0usize..5), 1..20),
    ) {
        let (_dir, index) = build_docs(width, &docs, shard_tokens);
        let streams: Vec<Vec<u32>> = expected_shards(&docs, shard_tokens)
            .iter()
            .map(|s| shard_stream(width, s))
            .collect();
        let all: Vec<u32> = docs.concat();
        for (at, len) in picks {
            // n-grams that occur (taken from the corpus) and ones that may not (length past the end)
            let start = at.index(all.len());
            let needle = &all[start..(start + len).min(all.len())];
            let expected: u64 = streams.iter().map(|s| brute_count(s, needle)).sum();
            prop_assert_eq!(index.count(needle).unwrap(), expected, "needle {:?}", needle);
        }
        let absent = vec![width.separator() - 1; 50];
        let expected: u64 = streams.iter().map(|s| brute_count(s, &absent)).sum();
        prop_assert_eq!(index.count(&absent).unwrap(), expected);
    }
}

#[test]
fn separator_ids_are_refused_in_queries() {
    let (_dir, index) = build_docs(TokenWidth::U16, &[vec![1, 2, 3]], 100);
    assert!(matches!(index.count(&[65_535]), Err(ibid::Error::Query(_))));
    assert_eq!(index.count(&[]).unwrap(), 4);
}

#[test]
fn same_input_gives_identical_files() {
    let docs = vec![vec![5, 6, 7, 5, 6], vec![7, 7, 7], vec![1]];
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_corpus(dir.path(), &docs);
    let first = build_at(TokenWidth::U16, &corpus, dir.path().join("a"), 6);
    let second = build_at(TokenWidth::U16, &corpus, dir.path().join("b"), 6);
    assert!(first.shards.len() > 1);
    for (x, y) in first.shards.iter().zip(&second.shards) {
        assert_eq!(x.tokenized.bytes(), y.tokenized.bytes());
        assert_eq!(x.table.bytes(), y.table.bytes());
        assert_eq!(x.offsets.bytes(), y.offsets.bytes());
        assert_eq!(x.metadata.as_ref().unwrap().bytes(), y.metadata.as_ref().unwrap().bytes());
    }
    assert_eq!(first.manifest, second.manifest);
}
