//! Documents: fetched by suffix-array rank, by pointer or by number, with a display window around
//! the match; and random samples of the documents that contain an n-gram.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{partition, Stop};
use crate::error::{Error, Result};
use crate::index::open::{Index, Shard};

/// infini-gram's default display window, in tokens.
pub const DEFAULT_MAX_DISP_LEN: u64 = 1000;

/// One document, or the window of it around a match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocResult {
    /// Document number over all shards.
    pub doc_ix: u64,
    /// Tokens in the document (separator excluded).
    pub doc_len: u64,
    /// Tokens in the window shown.
    pub disp_len: u64,
    /// Where the match starts within the window.
    pub needle_offset: u64,
    /// The document's metadata line (JSON), empty if the index has none.
    pub metadata: String,
    pub token_ids: Vec<u32>,
    /// Always false: infini-gram's API blocks documents found in a second index; ibid has none.
    #[serde(default)]
    pub blocked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchDocsResult {
    pub cnt: u64,
    pub approx: bool,
    /// The rank of each sampled occurrence among all occurrences.
    pub idxs: Vec<u64>,
    pub documents: Vec<DocResult>,
}

impl Shard {
    /// The shard-local number of the document holding byte `ptr`.
    pub(super) fn doc_of(&self, ptr: u64) -> u64 {
        partition(1, self.documents(), |d| self.doc_offset(d) <= ptr) - 1
    }

    /// Byte range of document `doc`'s tokens (after its separator).
    fn doc_span(&self, doc: u64) -> (u64, u64) {
        let start = self.doc_offset(doc) + self.width.bytes() as u64;
        let end = if doc + 1 < self.documents() { self.doc_offset(doc + 1) } else { self.tokenized.len() };
        (start, end.max(start))
    }

    fn metadata_string(&self, doc: u64) -> String {
        self.metadata_line(doc).map(|l| String::from_utf8_lossy(l).into_owned()).unwrap_or_default()
    }
}

impl Index {
    fn shard(&self, s: usize) -> Result<&Shard> {
        self.shards.get(s).ok_or_else(|| Error::Query(format!("shard {s} does not exist (the index has {})", self.shards.len())))
    }

    fn docs_before(&self, s: usize) -> u64 {
        self.shards[..s].iter().map(Shard::documents).sum()
    }

    /// The document around byte `ptr` of shard `s`, showing up to `max_disp_len` tokens centred on it.
    pub fn doc_by_ptr(&self, s: usize, ptr: u64, max_disp_len: u64) -> Result<DocResult> {
        let shard = self.shard(s)?;
        let w = self.width.bytes() as u64;
        if ptr >= shard.tokenized.len() || !ptr.is_multiple_of(w) {
            return Err(Error::Query(format!("pointer {ptr} is not a token position of shard {s}")));
        }
        let doc = shard.doc_of(ptr);
        let (start, end) = shard.doc_span(doc);
        let before = max_disp_len / 2;
        let after = max_disp_len.div_ceil(2);
        let disp_start = start.max(ptr.saturating_sub(before * w));
        let disp_end = end.min(ptr + after * w).max(disp_start);
        Ok(DocResult {
            doc_ix: self.docs_before(s) + doc,
            doc_len: (end - start) / w,
            disp_len: (disp_end - disp_start) / w,
            needle_offset: ptr.saturating_sub(disp_start) / w,
            metadata: shard.metadata_string(doc),
            token_ids: shard.tokens_between(disp_start, disp_end),
            blocked: false,
        })
    }

    /// The document of the occurrence at suffix-array rank `rank` of shard `s` (see `find`).
    pub fn doc_by_rank(&self, s: usize, rank: u64, max_disp_len: u64) -> Result<DocResult> {
        let shard = self.shard(s)?;
        if rank >= shard.tokens() {
            return Err(Error::Query(format!("rank {rank} is past the {} positions of shard {s}", shard.tokens())));
        }
        self.doc_by_ptr(s, shard.pointer(rank), max_disp_len)
    }

    /// Document number `doc_ix` (over all shards), its first `max_disp_len` tokens.
    pub fn doc_by_ix(&self, doc_ix: u64, max_disp_len: u64) -> Result<DocResult> {
        let mut local = doc_ix;
        for shard in &self.shards {
            if local < shard.documents() {
                let w = self.width.bytes() as u64;
                let (start, end) = shard.doc_span(local);
                let disp_end = end.min(start + max_disp_len * w);
                return Ok(DocResult {
                    doc_ix,
                    doc_len: (end - start) / w,
                    disp_len: (disp_end - start) / w,
                    needle_offset: 0,
                    metadata: shard.metadata_string(local),
                    token_ids: shard.tokens_between(start, disp_end),
                    blocked: false,
                });
            }
            local -= shard.documents();
        }
        Err(Error::Query(format!("document {doc_ix} does not exist (the index has {})", self.documents())))
    }

    /// `maxnum` occurrences of an n-gram drawn at random (with replacement), with their documents.
    pub fn search_docs(&self, ids: &[u32], maxnum: usize, max_disp_len: u64, seed: Option<u64>) -> Result<SearchDocsResult> {
        self.search_docs_until(ids, maxnum, max_disp_len, seed, &Stop::never())
    }

    /// `search_docs`, given up with [`Error::Stopped`] when `stop` says so.
    pub fn search_docs_until(
        &self,
        ids: &[u32],
        maxnum: usize,
        max_disp_len: u64,
        seed: Option<u64>,
        stop: &Stop,
    ) -> Result<SearchDocsResult> {
        if maxnum == 0 {
            return Err(Error::Query("maxnum must be at least 1".into()));
        }
        let found = self.find(ids)?;
        let mut result = SearchDocsResult { cnt: found.count, approx: false, idxs: vec![], documents: vec![] };
        if found.count == 0 {
            return Ok(result);
        }
        let mut rng = seeded(seed);
        for _ in 0..maxnum {
            stop.check()?;
            let idx = rng.gen_range(0..found.count);
            let (s, rank) = locate(&found.segments, idx);
            result.idxs.push(idx);
            result.documents.push(self.doc_by_rank(s, rank, max_disp_len)?);
        }
        Ok(result)
    }
}

/// Shard and rank of the `idx`-th occurrence over all segments.
fn locate(segments: &[(u64, u64)], mut idx: u64) -> (usize, u64) {
    for (s, &(lo, hi)) in segments.iter().enumerate() {
        if idx < hi - lo {
            return (s, lo + idx);
        }
        idx -= hi - lo;
    }
    unreachable!("idx is below the total count")
}

pub(super) fn seeded(seed: Option<u64>) -> rand::rngs::StdRng {
    match seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_entropy(),
    }
}
