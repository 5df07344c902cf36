//! Drafts from the corpus index (REST-style): the longest suffix of the context that occurs in the
//! corpus, then what followed it there, as a trie weighted by counts.

use std::collections::HashMap;

use super::{Candidate, DraftSource};
use crate::index::Index;

pub struct IndexSource<'i> {
    index: &'i Index,
    /// Longest context suffix looked up.
    pub max_suffix: usize,
    /// Occurrences read per step (evenly spread over the match range).
    pub samples: u64,
    pub max_candidates: usize,
    /// Shortest matched suffix worth drafting from: one or two tokens of context say little in a
    /// large corpus, and such drafts mostly cost a batch slot for nothing.
    pub min_suffix: usize,
}

impl<'i> IndexSource<'i> {
    pub fn new(index: &'i Index) -> Self {
        IndexSource { index, max_suffix: 16, samples: 64, max_candidates: 8, min_suffix: 3 }
    }
}

impl DraftSource for IndexSource<'_> {
    fn name(&self) -> &str {
        "index"
    }

    fn propose(&mut self, context: &[u32], max_depth: usize) -> Vec<Candidate> {
        let sep = self.index.width.separator();
        let tail = &context[context.len().saturating_sub(self.max_suffix)..];
        if tail.iter().any(|&t| t >= sep) {
            return Vec::new();
        }
        let Ok(len) = self.index.longest_suffix(tail) else { return Vec::new() };
        if len == 0 || len < self.min_suffix.min(tail.len()) {
            return Vec::new();
        }
        let suffix = &tail[tail.len() - len..];
        let Ok(found) = self.index.find(suffix) else { return Vec::new() };
        let w = self.index.width.bytes() as u64;
        let num_bytes = len as u64 * w;
        // Count each continuation (up to max_depth tokens, stopping at a document end).
        let mut paths: HashMap<Vec<u32>, u64> = HashMap::new();
        let mut seen = 0u64;
        for (shard, &(lo, hi)) in self.index.shards.iter().zip(&found.segments) {
            let n = hi - lo;
            if n == 0 {
                continue;
            }
            let take = n.min(self.samples);
            for k in 0..take {
                let rank = lo + k * n / take;
                let start = shard.pointer(rank) + num_bytes;
                let mut cont = Vec::with_capacity(max_depth);
                for j in 0..max_depth as u64 {
                    match shard.token_at(start + j * w) {
                        Some(t) if t != sep => cont.push(t),
                        _ => break,
                    }
                }
                if !cont.is_empty() {
                    *paths.entry(cont).or_default() += 1;
                    seen += 1;
                }
            }
        }
        if seen == 0 {
            return Vec::new();
        }
        // Per token: the share of sampled occurrences that continue this way, among those that
        // agree up to it; the first token also by how much context matched.
        let confidence = 1.0 - 0.5f64.powi(len.min(16) as i32);
        let mut prefix_counts: HashMap<&[u32], u64> = HashMap::new();
        for (tokens, &c) in &paths {
            for j in 1..=tokens.len() {
                *prefix_counts.entry(&tokens[..j]).or_default() += c;
            }
        }
        let mut out: Vec<Candidate> = paths
            .keys()
            .map(|tokens| {
                let scores = (1..=tokens.len())
                    .map(|j| {
                        let here = prefix_counts[&tokens[..j]] as f64;
                        if j == 1 {
                            confidence * here / seen as f64
                        } else {
                            here / prefix_counts[&tokens[..j - 1]] as f64
                        }
                    })
                    .collect();
                Candidate { tokens: tokens.clone(), scores }
            })
            .collect();
        out.sort_by(|a, b| b.path_score().total_cmp(&a.path_score()).then(a.tokens.cmp(&b.tokens)));
        out.truncate(self.max_candidates);
        out
    }
}
