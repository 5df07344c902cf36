//! Queries over the suffix arrays, with infini-gram's semantics: each shard answers, the answers
//! add up. Token ids in, plain data out (serde), so the CLI and the HTTP server only translate.

mod cnf;
mod docs;
mod stop;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use cnf::{CnfOptions, CountResult, FindCnfResult};
pub use docs::{DocResult, SearchDocsResult, DEFAULT_MAX_DISP_LEN};
pub use stop::Stop;

use super::open::{Index, Shard};
use crate::error::{Error, Result};
use crate::tokenize::TokenWidth;

/// infini-gram's default cap on occurrences inspected by next-token queries.
pub const DEFAULT_MAX_SUPPORT: u64 = 1000;

/// The little-endian bytes of a query, refusing ids that the index cannot hold.
pub fn encode_query(width: TokenWidth, ids: &[u32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ids.len() * width.bytes());
    for &id in ids {
        if id >= width.separator() {
            return Err(Error::Query(format!(
                "token id {id} is out of range for {}-byte tokens (at most {})",
                width.bytes(),
                width.separator() - 1
            )));
        }
        out.extend_from_slice(&id.to_le_bytes()[..width.bytes()]);
    }
    Ok(out)
}

/// The first index in `[lo, hi)` where `pred` turns false (`pred` is monotone: true, then false).
#[inline]
pub(crate) fn partition(mut lo: u64, mut hi: u64, pred: impl Fn(u64) -> bool) -> u64 {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

impl Shard {
    #[inline]
    fn prefix(&self, rank: u64, len: usize) -> &[u8] {
        let s = self.suffix_at(self.pointer(rank));
        &s[..s.len().min(len)]
    }

    /// The suffix-array ranks `[lo, hi)` whose suffixes start with `query` (bytes).
    pub fn find_range(&self, query: &[u8]) -> (u64, u64) {
        self.find_range_in(query, 0, self.tokens())
    }

    /// `find_range` within a known enclosing range (e.g. the range of a prefix of `query`).
    pub fn find_range_in(&self, query: &[u8], lo: u64, hi: u64) -> (u64, u64) {
        if query.is_empty() {
            return (lo, hi);
        }
        let n = query.len();
        let lo = partition(lo, hi, |r| self.prefix(r, n) < query);
        let hi = partition(lo, hi, |r| self.prefix(r, n) <= query);
        (lo, hi)
    }

    /// Does `query` occur in this shard? One binary search instead of two.
    pub fn contains(&self, query: &[u8]) -> bool {
        let n = query.len();
        let lo = partition(0, self.tokens(), |r| self.prefix(r, n) < query);
        lo < self.tokens() && self.prefix(lo, n) == query
    }

    /// The token after the `num_bytes`-long match at suffix-array rank `rank`; the end of a
    /// document or of the shard reads as `eos`.
    #[inline]
    fn next_token(&self, rank: u64, num_bytes: u64, eos: u32) -> u32 {
        match self.token_at(self.pointer(rank) + num_bytes) {
            Some(t) if t != self.width.separator() => t,
            _ => eos,
        }
    }

    /// The raw token after a match (`None` at the end of the shard), to tell ranges apart exactly.
    #[inline]
    fn raw_next(&self, rank: u64, num_bytes: u64) -> Option<u32> {
        self.token_at(self.pointer(rank) + num_bytes)
    }

    /// Next-token counts over ranks `[start, end)`, infini-gram's divide and conquer: a range whose
    /// first and last next tokens agree is all that token, so the cost grows with the number of
    /// distinct next tokens, not with the number of occurrences. With `unit` > 1 ranges shorter than
    /// `4 × unit` are sampled every `unit` ranks (the `approx` case).
    ///
    /// The ranges are split level by level rather than depth first: the probes of one level do not
    /// depend on each other, so the processor overlaps their memory accesses.
    fn next_token_counts(
        &self,
        num_bytes: u64,
        (start, end): (u64, u64),
        unit: u64,
        eos: u32,
        out: &mut BTreeMap<u32, u64>,
        stop: &Stop,
    ) -> Result<()> {
        struct Range {
            start: u64,
            end: u64,
            first: Option<Option<u32>>,
            last: Option<Option<u32>>,
        }
        let mut level = vec![Range { start, end, first: None, last: None }];
        let mut next = Vec::new();
        let mut steps = 0usize;
        while !level.is_empty() {
            stop.check()?;
            for r in level.iter_mut().filter(|r| r.end - r.start >= 4 * unit) {
                if r.first.is_none() {
                    r.first = Some(self.raw_next(r.start, num_bytes));
                }
                if r.last.is_none() {
                    r.last = Some(self.raw_next(r.end - 1, num_bytes));
                }
            }
            for r in level.drain(..) {
                if r.start >= r.end {
                    continue;
                }
                if r.end - r.start < 4 * unit {
                    let mut rank = r.start;
                    while rank < r.end {
                        steps += 1;
                        stop.check_at(steps)?;
                        let full = rank + unit <= r.end;
                        let mid = if full { rank + unit / 2 } else { (rank + r.end) / 2 };
                        *out.entry(self.next_token(mid, num_bytes, eos)).or_default() += if full { unit } else { r.end - rank };
                        rank += unit;
                    }
                } else if r.first == r.last {
                    *out.entry(self.next_token(r.start, num_bytes, eos)).or_default() += r.end - r.start;
                } else {
                    let mid = (r.start + r.end) / 2;
                    next.push(Range { start: r.start, end: mid, first: r.first, last: None });
                    next.push(Range { start: mid, end: r.end, first: None, last: r.last });
                }
            }
            std::mem::swap(&mut level, &mut next);
        }
        Ok(())
    }
}

/// Where an n-gram occurs: a suffix-array segment per shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindResult {
    #[serde(rename = "cnt")]
    pub count: u64,
    /// `[lo, hi)` ranks per shard.
    #[serde(rename = "segment_by_shard")]
    pub segments: Vec<(u64, u64)>,
}

/// `P(token | context)` by counting; `prob` is -1 when the context never occurs (infini-gram's
/// "undefined").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbResult {
    pub prompt_cnt: u64,
    pub cont_cnt: u64,
    pub prob: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCount {
    pub cont_cnt: u64,
    pub prob: f64,
}

/// The distribution of the token after a context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NtdResult {
    pub prompt_cnt: u64,
    pub result_by_token_id: BTreeMap<u32, TokenCount>,
    /// True when more than `max_support` occurrences were sampled rather than all counted.
    pub approx: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfgramProbResult {
    #[serde(flatten)]
    pub prob: ProbResult,
    /// Tokens of the context's longest suffix that occurs in the index.
    pub suffix_len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfgramNtdResult {
    #[serde(flatten)]
    pub ntd: NtdResult,
    pub suffix_len: usize,
}

impl Index {
    /// Occurrences of an n-gram of token ids; the empty n-gram matches every position.
    pub fn find(&self, ids: &[u32]) -> Result<FindResult> {
        let query = encode_query(self.width, ids)?;
        let segments: Vec<(u64, u64)> = self.shards.iter().map(|s| s.find_range(&query)).collect();
        Ok(FindResult { count: segments.iter().map(|(lo, hi)| hi - lo).sum(), segments })
    }

    pub fn count(&self, ids: &[u32]) -> Result<u64> {
        Ok(self.find(ids)?.count)
    }

    /// Does the n-gram occur anywhere?
    pub fn contains(&self, ids: &[u32]) -> Result<bool> {
        let query = encode_query(self.width, ids)?;
        Ok(ids.is_empty() || self.shards.iter().any(|s| s.contains(&query)))
    }

    pub fn prob(&self, context: &[u32], token: u32) -> Result<ProbResult> {
        let found = self.find(context)?;
        encode_query(self.width, &[token])?;
        if found.count == 0 {
            return Ok(ProbResult { prompt_cnt: 0, cont_cnt: 0, prob: -1.0 });
        }
        let mut full = context.to_vec();
        full.push(token);
        let query = encode_query(self.width, &full)?;
        let cont_cnt: u64 = self
            .shards
            .iter()
            .zip(&found.segments)
            .map(|(s, &(lo, hi))| {
                let (a, b) = s.find_range_in(&query, lo, hi);
                b - a
            })
            .sum();
        Ok(ProbResult { prompt_cnt: found.count, cont_cnt, prob: cont_cnt as f64 / found.count as f64 })
    }

    /// Next-token distribution after `context`. Exact up to `max_support` occurrences; above
    /// that, occurrences are sampled in blocks of a power of two (infini-gram's approximation).
    pub fn ntd(&self, context: &[u32], max_support: u64) -> Result<NtdResult> {
        self.ntd_until(context, max_support, &Stop::never())
    }

    /// `ntd`, given up with [`Error::Stopped`] when `stop` says so.
    pub fn ntd_until(&self, context: &[u32], max_support: u64, stop: &Stop) -> Result<NtdResult> {
        if max_support == 0 {
            return Err(Error::Query("max_support must be at least 1".into()));
        }
        let found = self.find(context)?;
        if found.count == 0 {
            return Ok(NtdResult { prompt_cnt: 0, result_by_token_id: BTreeMap::new(), approx: false });
        }
        let mut unit = 1u64;
        while found.count > unit.saturating_mul(max_support) {
            unit <<= 1;
        }
        let num_bytes = (context.len() * self.width.bytes()) as u64;
        let mut counts = BTreeMap::new();
        for (shard, &(lo, hi)) in self.shards.iter().zip(&found.segments) {
            shard.next_token_counts(num_bytes, (lo, hi), unit, self.eos_token_id, &mut counts, stop)?;
        }
        let total: u64 = counts.values().sum();
        let result_by_token_id = counts.into_iter().map(|(t, c)| (t, TokenCount { cont_cnt: c, prob: c as f64 / total as f64 })).collect();
        Ok(NtdResult { prompt_cnt: total, result_by_token_id, approx: unit > 1 })
    }

    /// The length of the longest suffix of `context` that occurs in the index.
    pub fn longest_suffix(&self, context: &[u32]) -> Result<usize> {
        encode_query(self.width, context)?;
        let n = context.len();
        let occurs = |len: usize| self.contains(&context[n - len..]);
        // Occurrence is monotone in the suffix length: double, then bisect (infini-gram's search).
        let (mut lo, mut hi) = (0usize, 1usize);
        loop {
            if hi > n {
                hi = n + 1;
                break;
            }
            if !occurs(hi)? {
                break;
            }
            lo = hi;
            hi <<= 1;
        }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if occurs(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// ∞-gram probability: `prob` on the longest suffix of the context that occurs.
    pub fn infgram_prob(&self, context: &[u32], token: u32) -> Result<InfgramProbResult> {
        let suffix_len = self.longest_suffix(context)?;
        let prob = self.prob(&context[context.len() - suffix_len..], token)?;
        Ok(InfgramProbResult { prob, suffix_len })
    }

    /// ∞-gram next-token distribution: `ntd` on the longest suffix of the context that occurs.
    pub fn infgram_ntd(&self, context: &[u32], max_support: u64) -> Result<InfgramNtdResult> {
        self.infgram_ntd_until(context, max_support, &Stop::never())
    }

    /// `infgram_ntd`, given up with [`Error::Stopped`] when `stop` says so.
    pub fn infgram_ntd_until(&self, context: &[u32], max_support: u64, stop: &Stop) -> Result<InfgramNtdResult> {
        let suffix_len = self.longest_suffix(context)?;
        let ntd = self.ntd_until(&context[context.len() - suffix_len..], max_support, stop)?;
        Ok(InfgramNtdResult { ntd, suffix_len })
    }
}
