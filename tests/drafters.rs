//! The model-free drafters against what the corpus and the context really hold.

mod common;

use common::*;
use ibid::draft::{ContextSource, DraftSource, IndexSource, MergingDrafter, RecycleMatrix};
use ibid::index::{self, BuildOptions, Index};
use ibid::tokenize::TokenWidth;

fn build(docs: &[Vec<u32>]) -> (tempfile::TempDir, Index) {
    build_sharded(docs, None)
}

fn build_sharded(docs: &[Vec<u32>], max_shard_tokens: Option<u64>) -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.jsonl");
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({"text": IdTokenizer::encode(d)}).to_string()).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let out = dir.path().join("idx");
    let mut options = BuildOptions::new(&out);
    options.max_shard_tokens = max_shard_tokens;
    index::build(&[corpus], &IdTokenizer::new(TokenWidth::U16), &options, &index::Quiet).unwrap();
    let index = Index::open(&out).unwrap();
    (dir, index)
}

#[test]
fn index_drafter_proposes_what_follows_the_longest_matching_suffix() {
    // "5 6 7" is followed by "8 9" twice and by "1" once; "3 5 6 7" never occurs
    let docs = vec![vec![1, 5, 6, 7, 8, 9, 2], vec![4, 5, 6, 7, 8, 9], vec![5, 6, 7, 1]];
    let (_d, index) = build(&docs);
    let mut drafter = IndexSource::new(&index);
    let c = drafter.propose(&[3, 5, 6, 7], 2);
    assert_eq!(c[0].tokens, vec![8, 9]);
    assert_eq!(c[1].tokens, vec![1], "a document end stops the continuation");
    assert!(c[0].path_score() > c[1].path_score());
    let total: f64 = c.iter().map(|x| x.path_score()).sum();
    assert!(total <= 1.0 + 1e-9);
    assert!(c.iter().all(|x| x.scores.len() == x.tokens.len()));
    assert!(drafter.propose(&[60_000], 4).is_empty(), "no suffix occurs: nothing to propose");
}

#[test]
fn combined_tree_holds_both_sources_within_budget() {
    let docs = vec![vec![10, 11, 12, 13, 14], vec![10, 11, 12, 20, 21]];
    let (_d, index) = build(&docs);
    let mut c = MergingDrafter::new(vec![Box::new(ContextSource::default()), Box::new(IndexSource::new(&index))]);
    // the context repeats "10 11 12", followed by 30 earlier; the corpus continues it with 13 or 20
    let context = [10, 11, 12, 30, 31, 10, 11, 12];
    let tree = c.rank(&context, 6).tree;
    assert!(tree.len() <= 6 && !tree.is_empty());
    let firsts: Vec<u32> = (0..tree.len()).filter(|&n| tree.parent(n).is_none()).map(|n| tree.token(n)).collect();
    assert!(firsts.contains(&30), "{firsts:?}");
    assert!(firsts.contains(&13) || firsts.contains(&20), "{firsts:?}");
    assert_eq!(c.rank(&context, 0).tree.len(), 0);
    // a two-token match in the corpus is too weak to draft from
    let mut index_only = IndexSource::new(&index);
    assert!(index_only.propose(&[31, 11, 12], 4).is_empty());
    assert!(!index_only.propose(&[10, 11, 12], 4).is_empty());
}

/// Each token's `k` most frequent followers inside documents, most frequent first, smaller id
/// first among equals: by counting every adjacent pair.
fn brute_force_followers(docs: &[Vec<u32>], vocab: usize, k: usize) -> Vec<Vec<u32>> {
    let mut counts = vec![std::collections::BTreeMap::<u32, u64>::new(); vocab];
    for d in docs {
        for w in d.windows(2) {
            *counts[w[0] as usize].entry(w[1]).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|c| {
            let mut v: Vec<(u32, u64)> = c.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            v.into_iter().take(k).map(|(t, _)| t).collect()
        })
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    /// The warm start equals brute-force pair counts, over one shard or many.
    #[test]
    fn recycling_warm_start_is_the_most_frequent_followers(
        docs in proptest::collection::vec(proptest::collection::vec(0u32..12, 1..40), 1..12),
        shard in proptest::option::of(8u64..60),
        k in 1usize..5,
    ) {
        let (_d, index) = build_sharded(&docs, shard);
        let m = RecycleMatrix::from_index(&index, 12, k);
        let expected = brute_force_followers(&docs, 12, k);
        for t in 0..12u32 {
            proptest::prop_assert_eq!(m.row(t), &expected[t as usize][..], "token {}", t);
        }
    }
}

#[test]
fn recycling_drafts_follow_the_warm_rows() {
    let docs = vec![vec![1, 2, 3, 1, 2, 4, 1, 2, 3]];
    let (_d, index) = build(&docs);
    let m = RecycleMatrix::from_index(&index, 10, 2);
    assert_eq!(m.row(1), &[2]);
    assert_eq!(m.row(2), &[3, 4]);
    let mut d = ibid::draft::RecycleSource::new(m);
    let c = d.propose(&[7, 1], 3);
    assert_eq!(c[0].tokens, vec![2], "the best node first");
    assert!(c.iter().any(|x| x.tokens == vec![2, 3, 1]), "best-first expansion reaches depth 3");
}
