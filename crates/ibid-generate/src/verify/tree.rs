//! A tree of draft tokens: each node continues its parent (or the committed context, for roots).

use serde::{Deserialize, Serialize};

/// Where a draft token came from, for per-source acceptance statistics.
pub type SourceId = u8;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftTree {
    tokens: Vec<u32>,
    /// `None`: a child of the root (it continues the committed context).
    parents: Vec<Option<usize>>,
    depths: Vec<usize>,
    sources: Vec<SourceId>,
}

impl DraftTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// A single chain of tokens.
    pub fn chain(tokens: &[u32]) -> Self {
        let mut t = DraftTree::new();
        let mut parent = None;
        for &tok in tokens {
            parent = Some(t.push(parent, tok, 0));
        }
        t
    }

    /// Add `token` under `parent` (a node index, or `None` for the root) and return its index. A
    /// child that already exists is returned instead of duplicated.
    pub fn push(&mut self, parent: Option<usize>, token: u32, source: SourceId) -> usize {
        if let Some(existing) = self.child(parent, token) {
            return existing;
        }
        assert!(parent.is_none_or(|p| p < self.tokens.len()), "parent must exist");
        let depth = parent.map_or(1, |p| self.depths[p] + 1);
        self.tokens.push(token);
        self.parents.push(parent);
        self.depths.push(depth);
        self.sources.push(source);
        self.tokens.len() - 1
    }

    /// Add a path of tokens under `parent`, sharing any prefix already there; returns the last node.
    pub fn push_path(&mut self, mut parent: Option<usize>, tokens: &[u32], source: SourceId) -> Option<usize> {
        for &t in tokens {
            parent = Some(self.push(parent, t, source));
        }
        parent
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn token(&self, node: usize) -> u32 {
        self.tokens[node]
    }

    pub fn parent(&self, node: usize) -> Option<usize> {
        self.parents[node]
    }

    /// 1 for children of the root.
    pub fn depth(&self, node: usize) -> usize {
        self.depths[node]
    }

    pub fn source(&self, node: usize) -> SourceId {
        self.sources[node]
    }

    /// The child of `parent` (or of the root) that carries `token`.
    pub fn child(&self, parent: Option<usize>, token: u32) -> Option<usize> {
        (0..self.tokens.len()).find(|&i| self.parents[i] == parent && self.tokens[i] == token)
    }

    /// Nodes with no children.
    pub fn leaves(&self) -> Vec<usize> {
        let mut has_child = vec![false; self.len()];
        for p in self.parents.iter().flatten() {
            has_child[*p] = true;
        }
        (0..self.len()).filter(|&i| !has_child[i]).collect()
    }

    /// The tokens from the root down to `node`.
    pub fn path(&self, node: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.depths[node]);
        let mut cur = Some(node);
        while let Some(n) = cur {
            out.push(self.tokens[n]);
            cur = self.parents[n];
        }
        out.reverse();
        out
    }

    /// Keep the first `n` nodes (nodes are added parents first, so the result is still a tree).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
        self.parents.truncate(n);
        self.depths.truncate(n);
        self.sources.truncate(n);
    }

    pub fn max_depth(&self) -> usize {
        self.depths.iter().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_prefixes_and_finds_leaves() {
        let mut t = DraftTree::new();
        let a = t.push_path(None, &[1, 2, 3], 0).unwrap();
        let b = t.push_path(None, &[1, 2, 4], 1).unwrap();
        let c = t.push_path(None, &[5], 0).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t.path(a), vec![1, 2, 3]);
        assert_eq!(t.path(b), vec![1, 2, 4]);
        assert_eq!(t.depth(b), 3);
        assert_eq!(t.leaves(), vec![a, b, c]);
        assert_eq!(t.child(None, 1), Some(0));
        assert_eq!(t.child(Some(1), 4), Some(b));
        assert_eq!(DraftTree::chain(&[7, 8]).leaves(), vec![1]);
    }
}
