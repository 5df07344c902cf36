//! A merged draft tree before its cut, and the nodes the cut left out (shadow nodes): what the
//! budget cuts and what calibration learns from.

use crate::verify::DraftTree;
use crate::verify::SourceId;

/// A merged tree before its cut: nodes best first, with their path probabilities and their
/// sources' raw estimates.
#[derive(Debug, Clone, Default)]
pub struct RankedTree {
    pub tree: DraftTree,
    pub path_p: Vec<f64>,
    pub raw: Vec<f64>,
    /// Per node: the other sources that proposed it, with their raw estimates.
    pub seconders: Vec<Vec<(SourceId, f64)>>,
    /// Nodes the cut left out whose parent it kept (or that continue the root).
    pub shadow: Vec<Shadow>,
}

/// A candidate node that was not verified but hangs right below the tree: once the step has
/// chosen a token after its parent, whether it would have been accepted is known. Calibration
/// learns from it at no cost, as if it had been verified: sources that a few failures ranked out
/// keep being judged on their first tokens, and the depth just past each accepted path is judged
/// every step, so the trust in long chains grows as fast as they succeed.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub parent: Option<usize>,
    pub token: u32,
    pub source: SourceId,
    pub raw: f64,
    pub seconders: Vec<(SourceId, f64)>,
}

/// A tree made without estimates (a test's, a fixed one): every path counted as sure, no other
/// sources. Without a budget the engine verifies it as it is.
impl From<DraftTree> for RankedTree {
    fn from(tree: DraftTree) -> Self {
        let n = tree.len();
        RankedTree { tree, path_p: vec![1.0; n], raw: vec![1.0; n], seconders: vec![Vec::new(); n], shadow: Vec::new() }
    }
}

impl RankedTree {
    /// Every source that proposed `node`, with its raw estimate: the tree's source first.
    pub fn proposers(&self, node: usize) -> impl Iterator<Item = (SourceId, f64)> + '_ {
        let first = self.raw.get(node).map(|&raw| (self.tree.source(node), raw));
        first.into_iter().chain(self.seconders.get(node).into_iter().flatten().copied())
    }

    /// Keep the best `keep` nodes (a child never comes before its parent); the cut-off children
    /// of kept nodes become shadow nodes.
    pub fn truncate(&mut self, keep: usize) {
        let kept = |parent: Option<usize>| parent.is_none_or(|p| p < keep);
        self.shadow.retain(|s| kept(s.parent));
        for n in keep..self.tree.len() {
            let parent = self.tree.parent(n);
            if kept(parent) {
                self.shadow.push(Shadow {
                    parent,
                    token: self.tree.token(n),
                    source: self.tree.source(n),
                    raw: self.raw[n],
                    seconders: self.seconders.get(n).cloned().unwrap_or_default(),
                });
            }
        }
        self.tree.truncate(keep);
        self.path_p.truncate(keep);
        self.raw.truncate(keep);
        self.seconders.truncate(keep);
    }

    /// Keep the best nodes up to the first that would make more than `max` root-to-leaf paths.
    pub fn limit_leaves(&mut self, max: usize) {
        let mut has_child = vec![false; self.tree.len()];
        let mut leaves = 0;
        for n in 0..self.tree.len() {
            match self.tree.parent(n) {
                Some(p) if !has_child[p] => has_child[p] = true, // the parent stops being a leaf
                _ => leaves += 1,
            }
            if leaves > max {
                self.truncate(n);
                return;
            }
        }
    }
}
