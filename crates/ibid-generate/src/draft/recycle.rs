//! Token recycling: for every token, the `k` tokens the model most recently ranked highest right
//! after it. Every node the verifier computes refreshes its token's row from its logits, so the
//! matrix keeps what the model itself would say next. It starts warm from the corpus index (the
//! most frequent followers of each token), is saved next to the index per model, and drafts a tree
//! by best-first expansion: row of the last token, then the rows of those tokens, and so on.

use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Candidate, DraftSource};
use crate::error::{write_atomic, Error, IoContext, Result};
use crate::index::Index;
use crate::verify::SourceId;
use crate::verify::{DraftTree, StepOutcome};

/// Followers kept per token.
pub const DEFAULT_K: usize = 8;
const EMPTY: u32 = u32::MAX;
const MAGIC: &[u8; 8] = b"IBIDRCY1";

/// `vocab × k` next-token candidates, best first; `EMPTY` fills short rows.
#[derive(Debug, Clone, PartialEq)]
pub struct RecycleMatrix {
    k: usize,
    vocab: usize,
    next: Vec<u32>,
}

impl RecycleMatrix {
    /// An empty matrix (every row empty).
    pub fn new(vocab: usize, k: usize) -> Self {
        RecycleMatrix { k, vocab, next: vec![EMPTY; vocab * k] }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The followers of `token`, best first (empty for tokens outside the vocabulary).
    pub fn row(&self, token: u32) -> &[u32] {
        let t = token as usize;
        if t >= self.vocab {
            return &[];
        }
        let row = &self.next[t * self.k..(t + 1) * self.k];
        &row[..row.iter().position(|&x| x == EMPTY).unwrap_or(self.k)]
    }

    /// Rows that hold at least one follower.
    pub fn filled_rows(&self) -> usize {
        self.next.chunks(self.k).filter(|r| r[0] != EMPTY).count()
    }

    /// Replace `token`'s row with the `k` highest of `logits` (the model's view right after it).
    pub fn update_from_logits(&mut self, token: u32, logits: &[f32]) {
        let t = token as usize;
        if t >= self.vocab {
            return;
        }
        let best = top_k_ids(logits, self.k);
        let row = &mut self.next[t * self.k..(t + 1) * self.k];
        row.fill(EMPTY);
        for (slot, id) in row.iter_mut().zip(best) {
            *slot = id;
        }
    }

    /// Warm start: each token's most frequent followers in the corpus, from one pass over every
    /// shard's suffix array (suffixes that start with the same two tokens are adjacent there).
    pub fn from_index(index: &Index, vocab: usize, k: usize) -> Self {
        let sep = index.width.separator();
        let w = index.width.bytes() as u64;
        // (first, second, count) runs; a run cut by a chunk boundary or a shard appears twice
        let mut runs: Vec<(u32, u32, u64)> = index
            .shards
            .iter()
            .flat_map(|shard| {
                let n = shard.tokens();
                let chunk = 1u64 << 20;
                (0..n.div_ceil(chunk))
                    .into_par_iter()
                    .map(|c| {
                        let mut out: Vec<(u32, u32, u64)> = Vec::new();
                        for rank in c * chunk..((c + 1) * chunk).min(n) {
                            let p = shard.pointer(rank);
                            let (Some(a), Some(b)) = (shard.token_at(p), shard.token_at(p + w)) else { continue };
                            if a == sep || b == sep || a as usize >= vocab || b as usize >= vocab {
                                continue;
                            }
                            match out.last_mut() {
                                Some(last) if last.0 == a && last.1 == b => last.2 += 1,
                                _ => out.push((a, b, 1)),
                            }
                        }
                        out
                    })
                    .collect::<Vec<_>>()
            })
            .flatten()
            .collect();
        runs.par_sort_unstable_by_key(|&(a, b, _)| (a, b));
        let mut merged: Vec<(u32, u32, u64)> = Vec::with_capacity(runs.len());
        for r in runs {
            match merged.last_mut() {
                Some(last) if last.0 == r.0 && last.1 == r.1 => last.2 += r.2,
                _ => merged.push(r),
            }
        }
        let mut m = RecycleMatrix::new(vocab, k);
        for group in merged.chunk_by_mut(|x, y| x.0 == y.0) {
            // most frequent first; the smaller id among equals, so the result is deterministic
            group.sort_unstable_by(|x, y| y.2.cmp(&x.2).then(x.1.cmp(&y.1)));
            let a = group[0].0 as usize;
            for (slot, &(_, b, _)) in m.next[a * k..(a + 1) * k].iter_mut().zip(group.iter()) {
                *slot = b;
            }
        }
        m
    }

    /// Save atomically, tagged with `identity` (which model and index the rows belong to).
    pub fn save(&self, path: &Path, identity: &str) -> Result<()> {
        let mut bytes = Vec::with_capacity(40 + identity.len() + self.next.len() * 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(self.vocab as u64).to_le_bytes());
        bytes.extend_from_slice(&(self.k as u64).to_le_bytes());
        bytes.extend_from_slice(&(identity.len() as u64).to_le_bytes());
        bytes.extend_from_slice(identity.as_bytes());
        for &x in &self.next {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        write_atomic(path, &bytes)
    }

    /// Load a matrix saved for exactly this `vocab`, `k` and `identity`; sizes and the checksum are
    /// checked before any row is trusted.
    pub fn load(path: &Path, vocab: usize, k: usize, identity: &str) -> Result<Self> {
        let bytes = std::fs::read(path).at(path)?;
        let bad = |reason: String| Error::Unusable { path: path.to_path_buf(), reason };
        let header = 8 + 24;
        if bytes.len() < header + 8 || &bytes[..8] != MAGIC {
            return Err(bad("not a recycling matrix".into()));
        }
        let word = |i: usize| u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
        let (file_vocab, file_k, id_len) = (word(0), word(1), word(2));
        if file_vocab != vocab as u64 || file_k != k as u64 {
            return Err(bad(format!("made for {file_vocab} tokens × {file_k}, not {vocab} × {k}")));
        }
        let expected = (header as u64)
            .checked_add(id_len)
            .and_then(|n| n.checked_add(vocab as u64 * k as u64 * 4 + 8))
            .ok_or_else(|| bad("impossible sizes".into()))?;
        if bytes.len() as u64 != expected {
            return Err(bad(format!("{} bytes where {expected} were expected (truncated?)", bytes.len())));
        }
        let body = &bytes[..bytes.len() - 8];
        let sum = u64::from_le_bytes(bytes[bytes.len() - 8..].try_into().expect("8 bytes"));
        if xxhash_rust::xxh3::xxh3_64(body) != sum {
            return Err(bad("checksum mismatch".into()));
        }
        let file_identity = &body[header..header + id_len as usize];
        if file_identity != identity.as_bytes() {
            return Err(bad(format!("made for {:?}, not {identity:?}", String::from_utf8_lossy(file_identity))));
        }
        let next: Vec<u32> =
            body[header + id_len as usize..].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        if next.iter().any(|&x| x != EMPTY && x as usize >= vocab) {
            return Err(bad("a follower outside the vocabulary".into()));
        }
        Ok(RecycleMatrix { k, vocab, next })
    }
}

/// Where the matrix for a model (by vocabulary hash) lives: next to the index it was warmed from.
pub fn matrix_path(index_dir: &Path, vocab_hash: &str, k: usize) -> PathBuf {
    let short: String = vocab_hash.chars().take(16).collect();
    index_dir.join(format!("recycle-{short}-k{k}.bin"))
}

/// What a saved matrix belongs to: the model's vocabulary and the index's files.
pub fn identity(vocab_hash: &str, index: Option<&Index>) -> String {
    let index_part = match index {
        Some(ix) => match &ix.manifest {
            Some(m) => m.shards.iter().flat_map(|s| s.files.values().map(|f| f.xxh3.clone())).collect::<Vec<_>>().join(","),
            None => format!("{}:{}", ix.tokens(), ix.documents()),
        },
        None => "none".into(),
    };
    format!("vocab={vocab_hash};index={index_part}")
}

/// Where a matrix came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatrixOrigin {
    /// Loaded from an earlier run.
    Loaded,
    /// Warmed from the index's most frequent followers.
    FromIndex,
    /// Empty: no index and no earlier run; rows fill from the model's logits.
    Empty,
}

/// The saved matrix at `path` if it belongs to `identity`, else a new one warmed from `index`
/// (or empty). A file that cannot be used is reported in the third value and replaced on save.
pub fn open_matrix(
    path: &Path,
    identity: &str,
    index: Option<&Index>,
    vocab: usize,
    k: usize,
) -> (RecycleMatrix, MatrixOrigin, Option<Error>) {
    let problem = match RecycleMatrix::load(path, vocab, k, identity) {
        Ok(m) => return (m, MatrixOrigin::Loaded, None),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(e),
    };
    match index {
        Some(ix) => (RecycleMatrix::from_index(ix, vocab, k), MatrixOrigin::FromIndex, problem),
        None => (RecycleMatrix::new(vocab, k), MatrixOrigin::Empty, problem),
    }
}

/// The ids of the `k` largest values, largest first (ties: smaller id first).
pub fn top_k_ids(values: &[f32], k: usize) -> Vec<u32> {
    crate::verify::top_k(values, k).into_iter().map(|(id, _)| id).collect()
}

/// Drafts from a [`RecycleMatrix`] and keeps it current from the verifier's logits.
pub struct RecycleSource {
    pub matrix: RecycleMatrix,
    /// Most nodes proposed per step.
    pub max_nodes: usize,
    /// Per rank: proposed nodes whose parent was accepted, and how many of those were accepted.
    reached: Vec<u64>,
    accepted: Vec<u64>,
    /// Rank of the last token of each path proposed this step.
    proposed: HashMap<Vec<u32>, usize>,
    /// Rows refreshed from logits.
    pub updates: u64,
    /// Where the matrix came from, and where to save it when the run is over.
    pub origin: Option<MatrixOrigin>,
    pub save_to: Option<(PathBuf, String)>,
}

impl RecycleSource {
    pub fn new(matrix: RecycleMatrix) -> Self {
        let k = matrix.k();
        RecycleSource {
            matrix,
            max_nodes: 24,
            reached: vec![0; k],
            accepted: vec![0; k],
            proposed: HashMap::new(),
            updates: 0,
            origin: None,
            save_to: None,
        }
    }

    /// The drafter for `model` (and `index`): its saved matrix, else one warmed from the index,
    /// else an empty one. With `save`, the matrix is written back by [`DraftSource::finish`]. A saved
    /// file that could not be used comes back as the second value (it will be replaced).
    pub fn for_model(model: &crate::model::Model, index: Option<&Index>, save: bool) -> (Self, Option<Error>) {
        use crate::tokenize::Tokenizer;
        let vocab_hash = model.tokenizer().identity().vocab_hash.clone();
        let dir = index.map_or_else(crate::calibrate::cache_dir, |ix| ix.dir.clone());
        let path = matrix_path(&dir, &vocab_hash, DEFAULT_K);
        let id = identity(&vocab_hash, index);
        let (matrix, origin, problem) = open_matrix(&path, &id, index, model.n_vocab(), DEFAULT_K);
        let mut drafter = RecycleSource::new(matrix);
        drafter.origin = Some(origin);
        if save {
            drafter.save_to = Some((path, id));
        }
        (drafter, problem)
    }

    /// Probability that a rank-`r` follower is accepted once its parent was: counts with a prior
    /// that falls with rank.
    pub fn p_rank(&self, r: usize) -> f64 {
        let prior = 0.4 / (1.0 + r as f64);
        (self.accepted[r] as f64 + 4.0 * prior) / (self.reached[r] as f64 + 4.0)
    }
}

#[derive(PartialEq)]
struct Open {
    score: f64,
    path: Vec<u32>,
    /// Per token: the acceptance estimate of its rank.
    scores: Vec<f64>,
}

impl Eq for Open {}

impl PartialOrd for Open {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Open {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.path.cmp(&self.path))
    }
}

impl DraftSource for RecycleSource {
    fn name(&self) -> &str {
        "recycle"
    }

    fn propose(&mut self, context: &[u32], max_depth: usize) -> Vec<Candidate> {
        self.proposed.clear();
        let Some(&last) = context.last() else { return Vec::new() };
        let mut heap = BinaryHeap::new();
        for (r, &t) in self.matrix.row(last).iter().enumerate() {
            heap.push(Open { score: self.p_rank(r), path: vec![t], scores: vec![self.p_rank(r)] });
            self.proposed.insert(vec![t], r);
        }
        let mut out = Vec::new();
        // Best first: a node comes out after its parent, since scores only fall along a path.
        while let Some(Open { score, path, scores }) = heap.pop() {
            if out.len() >= self.max_nodes {
                break;
            }
            if path.len() < max_depth {
                let tail = *path.last().expect("non-empty path");
                for (r, &t) in self.matrix.row(tail).iter().enumerate() {
                    let mut child = path.clone();
                    child.push(t);
                    self.proposed.entry(child.clone()).or_insert(r);
                    let mut child_scores = scores.clone();
                    child_scores.push(self.p_rank(r));
                    heap.push(Open { score: score * self.p_rank(r), path: child, scores: child_scores });
                }
            }
            out.push(Candidate { tokens: path, scores });
        }
        out
    }

    fn observe(&mut self, tree: &DraftTree, outcome: &StepOutcome, source: SourceId) {
        let mut accepted = vec![false; tree.len()];
        for &n in &outcome.accepted {
            accepted[n] = true;
        }
        for node in 0..tree.len() {
            if tree.source(node) != source || !tree.parent(node).is_none_or(|p| accepted[p]) {
                continue;
            }
            if let Some(&r) = self.proposed.get(&tree.path(node)) {
                self.reached[r] += 1;
                self.accepted[r] += u64::from(accepted[node]);
            }
        }
    }

    fn wants_logits(&self) -> bool {
        true
    }

    fn observe_logits(&mut self, token: u32, logits: &[f32]) {
        self.matrix.update_from_logits(token, logits);
        self.updates += 1;
    }

    fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "origin": self.origin,
            "filled_rows": self.matrix.filled_rows(),
            "row_updates": self.updates,
            "p_rank": (0..self.matrix.k()).map(|r| (self.p_rank(r) * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        })
    }

    fn finish(&mut self) -> Result<()> {
        match &self.save_to {
            Some((path, identity)) => self.matrix.save(path, identity),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ids_matches_a_full_sort() {
        let mut x: u64 = 7;
        for n in [0usize, 1, 5, 63, 64, 65, 255, 256, 257, 1000, 4099] {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((x >> 40) % 200) as f32 / 7.0 - 10.0
                })
                .collect();
            for k in [1usize, 3, 8] {
                let mut ids: Vec<u32> = (0..n as u32).collect();
                ids.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]).then(a.cmp(&b)));
                ids.truncate(k);
                assert_eq!(top_k_ids(&v, k), ids, "n={n} k={k}");
            }
        }
    }

    #[test]
    fn rows_update_from_logits_and_bound_the_vocabulary() {
        let mut m = RecycleMatrix::new(10, 3);
        assert!(m.row(4).is_empty());
        let logits = [0.0, 5.0, 1.0, 9.0, 0.5, 0.0, 0.0, 0.0, 0.0, 2.0];
        m.update_from_logits(4, &logits);
        assert_eq!(m.row(4), &[3, 1, 9]);
        assert_eq!(m.filled_rows(), 1);
        m.update_from_logits(99, &logits);
        assert!(m.row(99).is_empty());
    }

    #[test]
    fn drafts_best_first_and_learns_rank_acceptance() {
        let mut m = RecycleMatrix::new(10, 2);
        m.update_from_logits(1, &[0.0, 0.0, 5.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]); // 1 → 2, 3
        m.update_from_logits(2, &[0.0, 0.0, 0.0, 0.0, 5.0, 4.0, 0.0, 0.0, 0.0, 0.0]); // 2 → 4, 5
        let mut d = RecycleSource::new(m);
        d.max_nodes = 3;
        let c = d.propose(&[7, 1], 4);
        let paths: Vec<Vec<u32>> = c.iter().map(|c| c.tokens.clone()).collect();
        assert_eq!(paths, vec![vec![2], vec![3], vec![2, 4]], "0.4, 0.2, then 0.4 × 0.4");
        assert!(c.windows(2).all(|w| w[0].path_score() >= w[1].path_score()));
        // the model accepted 2 then 4: rank 0 at depth 1 and 2
        let mut tree = DraftTree::new();
        let a = tree.push(None, 2, 0);
        tree.push(Some(a), 4, 0);
        tree.push(None, 3, 0);
        let before = d.p_rank(0);
        d.observe(&tree, &StepOutcome { emitted: vec![2, 4, 6], accepted: vec![0, 1], margins: vec![], batch_tokens: 4 }, 0);
        assert!(d.p_rank(0) > before);
        assert!(d.p_rank(1) < 0.2 + 1e-9);
    }

    #[test]
    fn save_and_load_check_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        let mut m = RecycleMatrix::new(50, 4);
        m.update_from_logits(3, &(0..50).map(|i| (i % 7) as f32).collect::<Vec<_>>());
        m.save(&path, "id-a").unwrap();
        assert_eq!(RecycleMatrix::load(&path, 50, 4, "id-a").unwrap(), m);
        assert!(matches!(RecycleMatrix::load(&path, 50, 4, "id-b"), Err(Error::Unusable { .. })));
        assert!(matches!(RecycleMatrix::load(&path, 51, 4, "id-a"), Err(Error::Unusable { .. })));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(RecycleMatrix::load(&path, 50, 4, "id-a"), Err(Error::Unusable { .. })));
        let mut flipped = bytes.clone();
        flipped[60] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(RecycleMatrix::load(&path, 50, 4, "id-a"), Err(Error::Unusable { .. })));
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(RecycleMatrix::load(&path, 50, 4, "id-a"), Err(Error::Unusable { .. })));
    }
}
