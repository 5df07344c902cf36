//! CNF queries (an AND of ORs of n-grams), with infini-gram's semantics: occurrences of every
//! clause within `max_diff_tokens` of each other, inside one document. Clauses with more than
//! `max_clause_freq` occurrences are subsampled (then `approx` is set).

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::docs::{seeded, SearchDocsResult};
use super::{encode_query, FindResult, Stop};
use crate::error::{Error, Result};
use crate::index::open::{Index, Shard};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CnfOptions {
    pub max_clause_freq: u64,
    pub max_diff_tokens: u64,
}

impl Default for CnfOptions {
    /// infini-gram's defaults.
    fn default() -> Self {
        CnfOptions { max_clause_freq: 50_000, max_diff_tokens: 100 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountResult {
    pub count: u64,
    pub approx: bool,
}

/// Matches of a CNF: for each shard, the byte offset where each match starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindCnfResult {
    pub cnt: u64,
    pub approx: bool,
    pub ptrs_by_shard: Vec<Vec<u64>>,
}

/// One OR clause's occurrences: per shard, its terms' segments (maybe subsampled).
struct Clause {
    count_by_shard: Vec<u64>,
    segments_by_shard: Vec<Vec<(u64, u64)>>,
    factor_by_shard: Vec<f64>,
}

impl Index {
    fn find_clause(&self, terms: &[Vec<u32>], max_clause_freq: u64, seed: u64) -> Result<Clause> {
        let found: Vec<FindResult> = terms.iter().map(|t| self.find(t)).collect::<Result<_>>()?;
        let shards = self.shards.len() as u64;
        let per_shard = max_clause_freq.div_ceil(shards).max(1);
        let mut rng = seeded(Some(seed));
        let mut clause = Clause { count_by_shard: vec![], segments_by_shard: vec![], factor_by_shard: vec![] };
        for s in 0..self.shards.len() {
            let mut segments: Vec<(u64, u64)> = found.iter().map(|f| f.segments[s]).collect();
            let count: u64 = segments.iter().map(|(lo, hi)| hi - lo).sum();
            let mut factor = 1.0;
            if count > per_shard {
                // Keep a random contiguous run of each term's segment, in proportion to its size.
                let mut kept = 0;
                for seg in segments.iter_mut() {
                    let len = seg.1 - seg.0;
                    // in u128: len × per_shard passes u64 for a max_clause_freq near u64::MAX
                    let new_len = (u128::from(len) * u128::from(per_shard)).div_ceil(u128::from(count)) as u64;
                    let start = seg.0 + rng.gen_range(0..=len - new_len);
                    *seg = (start, start + new_len);
                    kept += new_len;
                }
                factor = count as f64 / kept.max(1) as f64;
            }
            clause.count_by_shard.push(count);
            clause.segments_by_shard.push(segments);
            clause.factor_by_shard.push(factor);
        }
        Ok(clause)
    }

    /// Occurrences of a CNF (`[[term, term], [term]]` = (term OR term) AND term).
    pub fn find_cnf(&self, cnf: &[Vec<Vec<u32>>], options: &CnfOptions) -> Result<FindCnfResult> {
        self.find_cnf_until(cnf, options, &Stop::never())
    }

    /// `find_cnf`, given up with [`Error::Stopped`] when `stop` says so.
    pub fn find_cnf_until(&self, cnf: &[Vec<Vec<u32>>], options: &CnfOptions, stop: &Stop) -> Result<FindCnfResult> {
        if cnf.is_empty() || cnf.iter().any(|c| c.is_empty() || c.iter().any(|t| t.is_empty())) {
            return Err(Error::Query("a CNF needs at least one clause, and every clause and term must be non-empty".into()));
        }
        for term in cnf.iter().flatten() {
            encode_query(self.width, term)?;
        }
        let clauses: Vec<Clause> = cnf
            .iter()
            .enumerate()
            .map(|(i, c)| self.find_clause(c, options.max_clause_freq, 19_260_817 + i as u64))
            .collect::<Result<_>>()?;
        if clauses.iter().any(|c| c.count_by_shard.iter().sum::<u64>() == 0) {
            return Ok(FindCnfResult { cnt: 0, approx: false, ptrs_by_shard: vec![] });
        }
        let mut cnt = 0;
        let mut approx = false;
        let mut ptrs_by_shard = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let (ranges, factor) = cnf_in_shard(shard, s, &clauses, options.max_diff_tokens, stop)?;
            // Each clause's subsampling factor multiplies in, so many subsampled clauses could
            // estimate more matches than the shard has positions (30 identical clauses gave
            // 18446744073709551615): a match starts at a distinct token, so the shard's token
            // count bounds the estimate, and the found matches bound it from below.
            let estimate = (ranges.len() as f64 * factor).min(shard.tokens() as f64) as u64;
            cnt = u64::saturating_add(cnt, estimate.max(ranges.len() as u64));
            approx |= factor != 1.0;
            ptrs_by_shard.push(ranges.into_iter().map(|(l, _)| l).collect());
        }
        Ok(FindCnfResult { cnt, approx, ptrs_by_shard })
    }

    pub fn count_cnf(&self, cnf: &[Vec<Vec<u32>>], options: &CnfOptions) -> Result<CountResult> {
        self.count_cnf_until(cnf, options, &Stop::never())
    }

    /// `count_cnf`, given up with [`Error::Stopped`] when `stop` says so.
    pub fn count_cnf_until(&self, cnf: &[Vec<Vec<u32>>], options: &CnfOptions, stop: &Stop) -> Result<CountResult> {
        let found = self.find_cnf_until(cnf, options, stop)?;
        Ok(CountResult { count: found.cnt, approx: found.approx })
    }

    /// `maxnum` random matches of a CNF with their documents.
    pub fn search_docs_cnf(
        &self,
        cnf: &[Vec<Vec<u32>>],
        maxnum: usize,
        max_disp_len: u64,
        options: &CnfOptions,
        seed: Option<u64>,
    ) -> Result<SearchDocsResult> {
        self.search_docs_cnf_until(cnf, (maxnum, max_disp_len), options, seed, &Stop::never())
    }

    /// `search_docs_cnf`, given up with [`Error::Stopped`] when `stop` says so.
    pub fn search_docs_cnf_until(
        &self,
        cnf: &[Vec<Vec<u32>>],
        (maxnum, max_disp_len): (usize, u64),
        options: &CnfOptions,
        seed: Option<u64>,
        stop: &Stop,
    ) -> Result<SearchDocsResult> {
        if maxnum == 0 {
            return Err(Error::Query("maxnum must be at least 1".into()));
        }
        let found = self.find_cnf_until(cnf, options, stop)?;
        let total: u64 = found.ptrs_by_shard.iter().map(|p| p.len() as u64).sum();
        let mut result = SearchDocsResult { cnt: found.cnt, approx: found.approx, idxs: vec![], documents: vec![] };
        if total == 0 {
            return Ok(result);
        }
        let mut rng = seeded(seed);
        for _ in 0..maxnum {
            stop.check()?;
            let mut i = rng.gen_range(0..total);
            let mut s = 0;
            while i >= found.ptrs_by_shard[s].len() as u64 {
                i -= found.ptrs_by_shard[s].len() as u64;
                s += 1;
            }
            let before: u64 = found.ptrs_by_shard[..s].iter().map(|p| p.len() as u64).sum();
            result.idxs.push(((before + i) as f64 / total as f64 * found.cnt as f64) as u64);
            result.documents.push(self.doc_by_ptr(s, found.ptrs_by_shard[s][i as usize], max_disp_len)?);
        }
        Ok(result)
    }
}

/// Matching byte ranges `[l, r]` of all clauses in one shard, and the subsampling factor.
fn cnf_in_shard(shard: &Shard, s: usize, clauses: &[Clause], max_diff_tokens: u64, stop: &Stop) -> Result<(Vec<(u64, u64)>, f64)> {
    let ptrs_of = |c: &Clause| -> Result<Vec<u64>> {
        let mut ptrs = Vec::new();
        for &(lo, hi) in &c.segments_by_shard[s] {
            for r in lo..hi {
                stop.check_at(ptrs.len())?;
                ptrs.push(shard.pointer(r));
            }
        }
        stop.check()?;
        ptrs.sort_unstable();
        Ok(ptrs)
    };
    // Start from the rarest clause in this shard.
    let mut order: Vec<&Clause> = clauses.iter().collect();
    order.sort_by_key(|c| c.count_by_shard[s]);
    let mut ranges: Vec<(u64, u64)> = ptrs_of(order[0])?.into_iter().map(|p| (p, p)).collect();
    let mut factor = order[0].factor_by_shard[s];
    // saturating: a max_diff_tokens of u64::MAX wrapped to a small distance (count 0)
    let diff = max_diff_tokens.saturating_mul(shard.width.bytes() as u64);
    for clause in &order[1..] {
        let ptrs = ptrs_of(clause)?;
        let mut next = Vec::new();
        for (i, &(l, r)) in ranges.iter().enumerate() {
            stop.check_at(i)?;
            // the last match before r, and the first match at or after l
            let below = ptrs.partition_point(|&p| p < r).checked_sub(1).map(|i| ptrs[i]);
            let above = ptrs.get(ptrs.partition_point(|&p| p < l)).copied();
            let left = below.map(|p| p.min(l)).filter(|&nl| nl.saturating_add(diff) >= l);
            let right = above.map(|p| p.max(r)).filter(|&nr| nr <= r.saturating_add(diff));
            match (left, right) {
                (Some(nl), Some(nr)) => next.push((nl, nr)),
                (Some(nl), None) => next.push((nl, r)),
                (None, Some(nr)) => next.push((l, nr)),
                (None, None) => {}
            }
        }
        ranges = next;
        factor *= clause.factor_by_shard[s];
    }
    // A match may not cross a document boundary: both ends in one document. Looked up in the
    // document offsets (O(log documents)) rather than by scanning the span for a separator, which
    // cost O(max_diff_tokens) per match and let one request with a huge max_diff_tokens read the
    // whole shard once per match.
    let mut kept = Vec::with_capacity(ranges.len());
    for (i, &(l, r)) in ranges.iter().enumerate() {
        stop.check_at(i)?;
        if shard.doc_of(l) == shard.doc_of(r) {
            kept.push((l, r));
        }
    }
    Ok((kept, factor))
}
