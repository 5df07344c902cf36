//! The model-free drafters against what the corpus and the context really hold.

mod common;

use common::*;
use ibid::draft::{Combined, ContextDrafter, IndexDrafter, Proposer};
use ibid::generate::Drafter;
use ibid::index::{self, BuildOptions, Index};
use ibid::tokenize::TokenWidth;

fn build(docs: &[Vec<u32>]) -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.jsonl");
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({"text": IdTokenizer::encode(d)}).to_string()).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let out = dir.path().join("idx");
    index::build(&[corpus], &IdTokenizer::new(TokenWidth::U16), &BuildOptions::new(&out), &index::build::Quiet).unwrap();
    let index = Index::open(&out).unwrap();
    (dir, index)
}

#[test]
fn index_drafter_proposes_what_follows_the_longest_matching_suffix() {
    // "5 6 7" is followed by "8 9" twice and by "1" once; "3 5 6 7" never occurs
    let docs = vec![vec![1, 5, 6, 7, 8, 9, 2], vec![4, 5, 6, 7, 8, 9], vec![5, 6, 7, 1]];
    let (_d, index) = build(&docs);
    let mut drafter = IndexDrafter::new(&index);
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
    let mut c = Combined::new(vec![Box::new(ContextDrafter::default()), Box::new(IndexDrafter::new(&index))]);
    // the context repeats "11 12" followed by 30 earlier; the corpus continues "11 12" with 13 or 20
    let context = [11, 12, 30, 31, 11, 12];
    let tree = c.draft(&context, 6);
    assert!(tree.len() <= 6 && !tree.is_empty());
    let firsts: Vec<u32> = (0..tree.len()).filter(|&n| tree.parent(n).is_none()).map(|n| tree.token(n)).collect();
    assert!(firsts.contains(&30), "{firsts:?}");
    assert!(firsts.contains(&13) || firsts.contains(&20), "{firsts:?}");
    assert_eq!(c.draft(&context, 0).len(), 0);
}
