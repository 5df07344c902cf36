//! Every query type against brute force over the token streams, on random corpora of each token
//! width, with one and several shards, and contexts that occur 0, 1 and many times.

// The helpers shared with the top-level tests call this crate by the facade's name.
extern crate ibid_index as ibid;

mod common;

use std::collections::BTreeMap;

use common::*;
use ibid::index::{self, BuildOptions, CnfOptions, Index};
use ibid::tokenize::TokenWidth;
use proptest::prelude::*;

struct Corpus {
    _dir: tempfile::TempDir,
    index: Index,
    /// Per shard: the token stream as stored (separators included).
    streams: Vec<Vec<u32>>,
    docs: Vec<Vec<u32>>,
}

fn build(width: TokenWidth, docs: Vec<Vec<u32>>, shard_tokens: u64) -> Corpus {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.jsonl");
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({"text": IdTokenizer::encode(d), "n": d.len()}).to_string()).collect();
    std::fs::write(&corpus, lines.join("\n")).unwrap();
    let mut options = BuildOptions::new(dir.path().join("idx"));
    options.max_shard_tokens = Some(shard_tokens);
    options.threads = 1;
    index::build(&[corpus], &IdTokenizer::new(width), &options, &index::Quiet).unwrap();
    let index = Index::open(dir.path().join("idx")).unwrap();
    // shard boundaries as the builder made them
    let mut streams = Vec::new();
    let mut d = 0;
    for shard in &index.shards {
        let n = shard.documents() as usize;
        streams.push(shard_stream(width, &docs[d..d + n]));
        d += n;
    }
    assert_eq!(d, docs.len());
    Corpus { _dir: dir, index, streams, docs }
}

/// Start positions of `ctx`; the empty context starts at every token (as `count([])` counts).
fn occurrences(stream: &[u32], ctx: &[u32]) -> Vec<usize> {
    if ctx.is_empty() {
        return (0..stream.len()).collect();
    }
    if ctx.len() > stream.len() {
        return vec![];
    }
    (0..=stream.len() - ctx.len()).filter(|&i| stream[i..i + ctx.len()] == *ctx).collect()
}

fn brute_ntd(c: &Corpus, ctx: &[u32], eos: u32, sep: u32) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for s in &c.streams {
        for i in occurrences(s, ctx) {
            let next = s.get(i + ctx.len()).copied().filter(|&t| t != sep).unwrap_or(eos);
            *out.entry(next).or_default() += 1;
        }
    }
    out
}

fn brute_count(c: &Corpus, ctx: &[u32]) -> u64 {
    c.streams.iter().map(|s| common::brute_count(s, ctx)).sum()
}

fn brute_longest_suffix(c: &Corpus, ctx: &[u32]) -> usize {
    (0..=ctx.len()).rev().find(|&l| brute_count(c, &ctx[ctx.len() - l..]) > 0).unwrap()
}

fn width_strategy() -> impl Strategy<Value = TokenWidth> {
    prop_oneof![Just(TokenWidth::U8), Just(TokenWidth::U16), Just(TokenWidth::U32)]
}

fn corpus_strategy() -> impl Strategy<Value = (TokenWidth, Vec<Vec<u32>>, u64)> {
    width_strategy().prop_flat_map(|w| {
        let top = w.separator() - 1;
        let token = prop_oneof![6 => 0u32..5, 1 => Just(top), 1 => 0u32..=top];
        (Just(w), prop::collection::vec(prop::collection::vec(token, 1..60), 1..10), prop_oneof![Just(100_000u64), 10u64..120])
    })
}

/// Contexts: taken from the corpus (occur at least once), extended past a document's end, or random.
fn contexts(c: &Corpus, picks: &[(prop::sample::Index, usize, u32)]) -> Vec<Vec<u32>> {
    let all: Vec<u32> = c.docs.concat();
    let mut out = vec![vec![]];
    for (at, len, extra) in picks {
        let start = at.index(all.len());
        let mut ctx = all[start..(start + len).min(all.len())].to_vec();
        if extra % 3 == 0 {
            ctx.push(extra % 5);
        }
        out.push(ctx);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn ngram_queries_match_brute_force(
        (width, docs, shard_tokens) in corpus_strategy(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 1usize..6, any::<u32>()), 1..12),
    ) {
        let c = build(width, docs, shard_tokens);
        let sep = width.separator();
        let eos = c.index.eos_token_id;
        prop_assert_eq!(eos, sep, "an index without a tokenizer EOS reports document ends as the separator");
        for ctx in contexts(&c, &picks) {
            let count = brute_count(&c, &ctx);
            prop_assert_eq!(c.index.count(&ctx).unwrap(), count);
            let found = c.index.find(&ctx).unwrap();
            prop_assert_eq!(found.count, count);
            for (shard, &(lo, hi)) in c.index.shards.iter().zip(&found.segments) {
                for rank in lo..hi {
                    let p = (shard.pointer(rank) / width.bytes() as u64) as usize;
                    let stream = &c.streams[shard.id];
                    prop_assert_eq!(&stream[p..p + ctx.len()], &ctx[..]);
                }
            }

            // ntd: exact when max_support covers every occurrence
            let dist = brute_ntd(&c, &ctx, eos, sep);
            let ntd = c.index.ntd(&ctx, count.max(1)).unwrap();
            prop_assert!(!ntd.approx);
            prop_assert_eq!(ntd.prompt_cnt, count);
            let got: BTreeMap<u32, u64> = ntd.result_by_token_id.iter().map(|(&t, v)| (t, v.cont_cnt)).collect();
            prop_assert_eq!(&got, &dist);
            // approx: same total, flagged, only tokens that really follow
            if count > 4 {
                let approx = c.index.ntd(&ctx, 2).unwrap();
                prop_assert!(approx.approx);
                prop_assert_eq!(approx.prompt_cnt, count);
                prop_assert!(approx.result_by_token_id.keys().all(|t| dist.contains_key(t)));
            }

            if let Some((&next, head)) = ctx.split_last() {
                let prompt = brute_count(&c, head);
                let prob = c.index.prob(head, next).unwrap();
                prop_assert_eq!(prob.prompt_cnt, prompt);
                if prompt == 0 {
                    prop_assert_eq!(prob.prob, -1.0);
                } else {
                    prop_assert_eq!(prob.cont_cnt, count);
                    prop_assert_eq!(prob.prob, count as f64 / prompt as f64);
                }
                let inf = c.index.infgram_prob(head, next).unwrap();
                let l = brute_longest_suffix(&c, head);
                prop_assert_eq!(inf.suffix_len, l);
                let suffix = &head[head.len() - l..];
                let mut with_next = suffix.to_vec();
                with_next.push(next);
                prop_assert_eq!(inf.prob.prompt_cnt, brute_count(&c, suffix));
                prop_assert_eq!(inf.prob.cont_cnt, brute_count(&c, &with_next));
                let inf_ntd = c.index.infgram_ntd(head, u64::MAX).unwrap();
                prop_assert_eq!(inf_ntd.suffix_len, l);
                let got: BTreeMap<u32, u64> = inf_ntd.ntd.result_by_token_id.iter().map(|(&t, v)| (t, v.cont_cnt)).collect();
                prop_assert_eq!(got, brute_ntd(&c, suffix, eos, sep));
            }
        }
    }

    #[test]
    fn documents_match_the_corpus(
        (width, docs, shard_tokens) in corpus_strategy(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 1usize..4, any::<u32>()), 1..6),
        disp in 1u64..80,
    ) {
        let c = build(width, docs, shard_tokens);
        for (ix, doc) in c.docs.iter().enumerate() {
            let got = c.index.doc_by_ix(ix as u64, 10_000).unwrap();
            prop_assert_eq!(&got.token_ids, doc);
            prop_assert_eq!(got.doc_len, doc.len() as u64);
            let meta: serde_json::Value = serde_json::from_str(&got.metadata).unwrap();
            prop_assert_eq!(&meta["metadata"]["n"], &serde_json::json!(doc.len()));
            prop_assert_eq!(meta["linenum"].as_u64(), Some(ix as u64));
        }
        prop_assert!(c.index.doc_by_ix(c.docs.len() as u64, 10).is_err());
        for ctx in contexts(&c, &picks).into_iter().filter(|c| !c.is_empty()) {
            let found = c.index.find(&ctx).unwrap();
            for (s, &(lo, hi)) in found.segments.iter().enumerate() {
                for rank in lo..hi {
                    let d = c.index.doc_by_rank(s, rank, disp).unwrap();
                    let doc = &c.docs[d.doc_ix as usize];
                    prop_assert_eq!(d.doc_len, doc.len() as u64);
                    prop_assert!(d.disp_len <= disp && d.token_ids.len() as u64 == d.disp_len);
                    // the window is a piece of the document with the match at needle_offset
                    let at = d.needle_offset as usize;
                    let window_in_doc = (0..=doc.len() - d.token_ids.len()).any(|o| doc[o..o + d.token_ids.len()] == d.token_ids[..]);
                    prop_assert!(window_in_doc);
                    let shown = &d.token_ids[at..];
                    let n = shown.len().min(ctx.len());
                    prop_assert_eq!(&shown[..n], &ctx[..n]);
                }
            }
            let sample = c.index.search_docs(&ctx, 5, disp, Some(7)).unwrap();
            prop_assert_eq!(sample.cnt, found.count);
            prop_assert_eq!(sample.documents.len(), if found.count == 0 { 0 } else { 5 });
            prop_assert_eq!(c.index.search_docs(&ctx, 5, disp, Some(7)).unwrap(), sample, "seeded samples repeat");
        }
    }

    #[test]
    fn cnf_or_clauses_count_every_term(
        (width, docs, shard_tokens) in corpus_strategy(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 1usize..4, any::<u32>()), 2..5),
    ) {
        let c = build(width, docs, shard_tokens);
        let terms: Vec<Vec<u32>> = contexts(&c, &picks).into_iter().filter(|t| !t.is_empty()).collect();
        prop_assume!(!terms.is_empty());
        // one OR clause: every occurrence of every term
        let expected: u64 = terms.iter().map(|t| brute_count(&c, t)).sum();
        let got = c.index.count_cnf(std::slice::from_ref(&terms), &CnfOptions { max_clause_freq: u64::MAX / 4, max_diff_tokens: 100 }).unwrap();
        prop_assert_eq!(got.count, expected, "terms {:?} counts {:?}", terms, terms.iter().map(|t| brute_count(&c, t)).collect::<Vec<_>>());
        prop_assert!(!got.approx);
        // AND of a term with itself, no distance allowed: each occurrence pairs with itself only
        let t = &terms[0];
        let tight = CnfOptions { max_clause_freq: 50_000, max_diff_tokens: 0 };
        let same = c.index.count_cnf(&[vec![t.clone()], vec![t.clone()]], &tight).unwrap();
        prop_assert_eq!(same.count, brute_count(&c, t));
        // AND with a term that never occurs: nothing
        let never = vec![width.separator() - 1; 70];
        let none = c.index.count_cnf(&[vec![t.clone()], vec![never]], &CnfOptions::default()).unwrap();
        prop_assert_eq!(none.count, 0);
    }

    /// The estimator's bounds: the same clause ANDed with itself any number of times, with a
    /// distance limit that overflows any multiplication and subsampling that multiplies its factor
    /// in once per clause, never counts more positions than the index has, never wraps to 0, and
    /// is exact whenever it says so. (`--max-diff-tokens 18446744073709551615` counted 0; 30
    /// identical clauses counted 18446744073709551615.)
    #[test]
    fn cnf_counts_saturate_and_stay_within_the_index(
        (width, docs, shard_tokens) in corpus_strategy(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 1usize..3, any::<u32>()), 1..2),
        copies in 1usize..31,
        max_clause_freq in prop::sample::select(vec![1u64, 2, 3, 7, 50_000, u64::MAX]),
        max_diff_tokens in prop::sample::select(vec![0u64, 100, 1 << 62, u64::MAX]),
    ) {
        let c = build(width, docs, shard_tokens);
        let terms: Vec<Vec<u32>> = contexts(&c, &picks).into_iter().filter(|t| !t.is_empty()).collect();
        prop_assume!(!terms.is_empty());
        let t = &terms[0];
        let cnf = vec![vec![t.clone()]; copies];
        let got = c.index.count_cnf(&cnf, &CnfOptions { max_clause_freq, max_diff_tokens }).unwrap();
        let occurrences = brute_count(&c, t);
        prop_assert!(got.count <= c.index.tokens(), "{} > {} tokens", got.count, c.index.tokens());
        if !got.approx {
            // each match grows from one occurrence; with no distance allowed, each matches itself
            // only; a wide distance never loses them all (a wrapped one did: count 0)
            prop_assert!(got.count <= occurrences);
            if max_diff_tokens == 0 {
                prop_assert_eq!(got.count, occurrences);
            }
            prop_assert!(got.count > 0 || occurrences == 0, "{} occurrences, count 0", occurrences);
        }
    }
}

/// Two clauses that co-occur within a window, against a scan of each document.
#[test]
fn cnf_and_finds_nearby_pairs_in_one_document() {
    // a=1, b=2: doc0 has a..b close; doc1 has a and b far apart; doc2 has b only; doc3 has a at the
    // end and b at the start of the next document (must not pair across the boundary)
    let docs = vec![vec![1, 7, 7, 2, 7], [vec![1], vec![7; 300], vec![2]].concat(), vec![2, 7, 7], vec![7, 7, 1], vec![2, 7]];
    let c = build(TokenWidth::U16, docs, 100_000);
    let opts = CnfOptions { max_clause_freq: 50_000, max_diff_tokens: 10 };
    let got = c.index.count_cnf(&[vec![vec![1]], vec![vec![2]]], &opts).unwrap();
    assert_eq!(got.count, 1);
    // infini-gram's semantics: a match spans the nearest occurrences on both sides that are within
    // reach; doc1's span reaches back to doc0's `2`, crosses a boundary and is dropped.
    let wide = CnfOptions { max_clause_freq: 50_000, max_diff_tokens: 400 };
    assert_eq!(c.index.count_cnf(&[vec![vec![1]], vec![vec![2]]], &wide).unwrap().count, 1);
    let docs = c.index.search_docs_cnf(&[vec![vec![1]], vec![vec![2]]], 3, 20, &opts, Some(1)).unwrap();
    assert!(docs.documents.iter().all(|d| d.doc_ix == 0));
}

#[test]
fn bad_queries_are_errors_not_panics() {
    let c = build(TokenWidth::U16, vec![vec![1, 2, 3], vec![4, 5]], 100_000);
    let i = &c.index;
    assert!(i.count(&[70_000]).is_err());
    assert!(i.ntd(&[1], 0).is_err());
    assert!(i.doc_by_rank(5, 0, 10).is_err());
    assert!(i.doc_by_rank(0, 1_000, 10).is_err());
    assert!(i.doc_by_ptr(0, 3, 10).is_err());
    assert!(i.doc_by_ptr(0, 1 << 40, 10).is_err());
    assert!(i.search_docs(&[1], 0, 10, None).is_err());
    assert!(i.count_cnf(&[], &CnfOptions::default()).is_err());
    assert!(i.count_cnf(&[vec![]], &CnfOptions::default()).is_err());
    assert!(i.count_cnf(&[vec![vec![]]], &CnfOptions::default()).is_err());
    // a query longer than any document (and than the corpus) simply does not occur
    let long: Vec<u32> = (0..100).map(|i| i % 5 + 1).collect();
    assert_eq!(i.count(&long).unwrap(), 0);
    assert_eq!(i.infgram_prob(&long, 1).unwrap().suffix_len, 2, "[4, 5] ends the query and doc 1");
    assert_eq!(i.prob(&long, 1).unwrap().prob, -1.0);
}

/// Every query with a loop that can run long gives up with `Stopped` when its stop says so, and
/// answers as before when it does not.
#[test]
fn long_queries_stop_when_asked() {
    use ibid::index::Stop;
    use std::time::{Duration, Instant};
    let docs: Vec<Vec<u32>> = (0..200).map(|d| (0..50).map(|i| 1 + (d * 7 + i * i) % 5).collect()).collect();
    let c = build(TokenWidth::U16, docs, 100_000);
    let i = &c.index;
    let passed = Stop::at(Instant::now());
    let later = Stop::at(Instant::now() + Duration::from_secs(600));
    let cnf = vec![vec![vec![1]], vec![vec![2]]];
    let opts = CnfOptions { max_clause_freq: 50_000, max_diff_tokens: 10 };
    let stopped = |r: Result<(), ibid::Error>| matches!(r, Err(ibid::Error::Stopped(_)));
    assert!(stopped(i.count_cnf_until(&cnf, &opts, &passed).map(drop)));
    assert!(stopped(i.search_docs_cnf_until(&cnf, (3, 20), &opts, Some(1), &passed).map(drop)));
    assert!(stopped(i.ntd_until(&[1], 1_000_000, &passed).map(drop)));
    assert!(stopped(i.infgram_ntd_until(&[9, 1], 1_000_000, &passed).map(drop)));
    assert!(stopped(i.search_docs_until(&[1], 3, 20, Some(1), &passed).map(drop)));
    assert_eq!(i.count_cnf_until(&cnf, &opts, &later).unwrap(), i.count_cnf(&cnf, &opts).unwrap());
    assert_eq!(i.ntd_until(&[1], 1_000_000, &later).unwrap(), i.ntd(&[1], 1_000_000).unwrap());
}
