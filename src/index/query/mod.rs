//! Queries over the suffix arrays: each shard answers, the answers add up.

use serde::{Deserialize, Serialize};

use super::open::{Index, Shard};
use crate::error::{Error, Result};
use crate::tokenize::TokenWidth;

/// The little-endian bytes of a query, refusing ids that the index cannot hold.
pub fn encode_query(width: TokenWidth, ids: &[u32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(ids.len() * width.bytes());
    for &id in ids {
        if id >= width.separator() {
            return Err(Error::Query(format!(
                "token id {id} is out of range for {}-byte tokens",
                width.bytes()
            )));
        }
        out.extend_from_slice(&id.to_le_bytes()[..width.bytes()]);
    }
    Ok(out)
}

impl Shard {
    /// The suffix-array ranks `[lo, hi)` whose suffixes start with `query` (bytes).
    pub fn find_range(&self, query: &[u8]) -> (u64, u64) {
        let n = self.tokens();
        let prefix = |rank: u64| {
            let s = self.suffix_at(self.pointer(rank));
            &s[..s.len().min(query.len())]
        };
        let lo = partition(0, n, |r| prefix(r) < query);
        let hi = partition(lo, n, |r| prefix(r) <= query);
        (lo, hi)
    }
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

/// Where an n-gram occurs: a suffix-array segment per shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindResult {
    pub count: u64,
    /// `[lo, hi)` ranks per shard.
    pub segments: Vec<(u64, u64)>,
}

impl Index {
    /// Occurrences of an n-gram of token ids; the empty n-gram matches every position.
    pub fn find(&self, ids: &[u32]) -> Result<FindResult> {
        let query = encode_query(self.width, ids)?;
        let segments: Vec<(u64, u64)> = self.shards.iter().map(|s| s.find_range(&query)).collect();
        Ok(FindResult {
            count: segments.iter().map(|(lo, hi)| hi - lo).sum(),
            segments,
        })
    }

    pub fn count(&self, ids: &[u32]) -> Result<u64> {
        Ok(self.find(ids)?.count)
    }
}
