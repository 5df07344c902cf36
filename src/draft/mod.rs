//! Drafters that cost no neural network: continuations from the running context and from the
//! corpus index. Each proposes scored paths; `Combined` merges them into one tree, best first.

pub mod budget;
pub mod context;
pub mod retrieve;

use crate::generate::Drafter;
use crate::verify::tree::SourceId;
use crate::verify::{DraftTree, StepOutcome};

pub use budget::Budget;
pub use context::ContextDrafter;
pub use retrieve::IndexDrafter;

/// A proposed continuation and how likely the proposer thinks each of its tokens is.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub tokens: Vec<u32>,
    /// Estimated probability that the whole path is accepted.
    pub score: f64,
}

/// A source of candidates.
pub trait Proposer {
    fn name(&self) -> &str;
    fn propose(&mut self, context: &[u32], max_depth: usize) -> Vec<Candidate>;
}

/// Acceptance counts per source, to weigh the sources against each other.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    pub drafted: u64,
    pub accepted: u64,
}

/// Several proposers merged into one tree: paths are added by descending score (scaled by each
/// source's observed acceptance), sharing prefixes, until the budget is spent.
pub struct Combined<'a> {
    proposers: Vec<Box<dyn Proposer + 'a>>,
    pub stats: Vec<SourceStats>,
    pub max_depth: usize,
    /// Sizes each step's tree from costs and acceptance; without it, the caller's budget is used.
    pub budget: Option<Budget>,
    /// Budgets chosen, for `--stats`.
    pub budgets: Vec<usize>,
}

impl<'a> Combined<'a> {
    pub fn new(proposers: Vec<Box<dyn Proposer + 'a>>) -> Self {
        let n = proposers.len();
        Combined { proposers, stats: vec![SourceStats::default(); n], max_depth: 12, budget: None, budgets: Vec::new() }
    }

    pub fn source_names(&self) -> Vec<String> {
        self.proposers.iter().map(|p| p.name().to_string()).collect()
    }

    /// Accepted draft tokens over drafted ones, with a prior of 1 in 2.
    fn acceptance(&self, source: usize) -> f64 {
        let s = &self.stats[source];
        (s.accepted as f64 + 1.0) / (s.drafted as f64 + 2.0)
    }
}

impl Drafter for Combined<'_> {
    fn name(&self) -> &str {
        "combined"
    }

    fn draft(&mut self, context: &[u32], budget: usize) -> DraftTree {
        let budget = self.budget.as_ref().map_or(budget, |b| b.choose().min(budget));
        self.budgets.push(budget);
        if budget == 0 {
            return DraftTree::new();
        }
        let mut all: Vec<(f64, SourceId, Vec<u32>)> = Vec::new();
        for i in 0..self.proposers.len() {
            let weight = self.acceptance(i);
            let max_depth = self.max_depth;
            for c in self.proposers[i].propose(context, max_depth) {
                if !c.tokens.is_empty() {
                    all.push((c.score * weight, i as SourceId, c.tokens));
                }
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut tree = DraftTree::new();
        for (_, source, tokens) in all {
            // only the part that fits: tokens already in the tree cost nothing
            let mut parent = None;
            for &t in &tokens {
                match tree.child(parent, t) {
                    Some(c) => parent = Some(c),
                    None if tree.len() < budget => parent = Some(tree.push(parent, t, source)),
                    None => break,
                }
            }
            if tree.len() >= budget {
                break;
            }
        }
        tree
    }

    fn observe(&mut self, tree: &DraftTree, outcome: &StepOutcome) {
        if let Some(b) = self.budget.as_mut() {
            b.observe(tree, outcome);
        }
        for node in 0..tree.len() {
            let s = tree.source(node) as usize;
            if let Some(stats) = self.stats.get_mut(s) {
                stats.drafted += 1;
            }
        }
        for &node in &outcome.accepted {
            let s = tree.source(node) as usize;
            if let Some(stats) = self.stats.get_mut(s) {
                stats.accepted += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<Candidate>);
    impl Proposer for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn propose(&mut self, _: &[u32], _: usize) -> Vec<Candidate> {
            self.0.clone()
        }
    }

    #[test]
    fn merges_best_first_within_budget() {
        let mut c = Combined::new(vec![Box::new(Fixed(vec![
            Candidate { tokens: vec![1, 2, 3], score: 0.9 },
            Candidate { tokens: vec![1, 2, 4], score: 0.5 },
            Candidate { tokens: vec![7, 8], score: 0.1 },
        ]))]);
        let t = c.draft(&[0], 4);
        assert_eq!(t.len(), 4);
        assert_eq!(t.path(2), vec![1, 2, 3]);
        assert_eq!(t.path(3), vec![1, 2, 4]);
        let t = c.draft(&[0], 10);
        assert_eq!(t.len(), 6);
        let out = StepOutcome { emitted: vec![1, 2, 9], accepted: vec![0, 1], margins: vec![], batch_tokens: 7 };
        c.observe(&t, &out);
        assert_eq!((c.stats[0].drafted, c.stats[0].accepted), (6, 2));
    }
}
