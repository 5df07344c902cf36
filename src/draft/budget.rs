//! How many draft tokens to verify per step: the count that maximizes expected tokens per second,
//! from the calibrated cost of a batch of N tokens and the acceptance seen so far at each depth.

use crate::calibrate::CostCurve;
use crate::verify::{DraftTree, StepOutcome};

pub struct Budget {
    /// Cost of a batch of n + 1 tokens relative to 1, for n = 0..=max.
    relative: Vec<f64>,
    /// Per depth d (1-based at index d - 1): steps whose tree reached depth d along the path
    /// accepted so far, and steps that accepted a token at depth d.
    reached: Vec<u64>,
    accepted: Vec<u64>,
    steps: u64,
}

/// Relative batch costs measured on a 2-core machine (1 thread), used until `ibid calibrate` has run.
const DEFAULT_CURVE: [(usize, f64); 7] = [(1, 1.0), (2, 1.33), (4, 1.93), (5, 2.95), (8, 3.14), (9, 3.9), (16, 4.9)];

impl Budget {
    pub fn new(curve: Option<&CostCurve>, max: usize) -> Self {
        let default = CostCurve {
            model_file: String::new(),
            model_bytes: 0,
            threads: 1,
            context_tokens: 0,
            seconds: DEFAULT_CURVE.to_vec(),
        };
        let curve = curve.unwrap_or(&default);
        let relative = (0..=max).map(|n| curve.relative(n + 1).max(1.0)).collect();
        Budget { relative, reached: vec![0; max], accepted: vec![0; max], steps: 0 }
    }

    /// Probability that depth `d` is accepted once depth `d - 1` was (a prior of 2 in 3).
    fn p(&self, d: usize) -> f64 {
        (self.accepted[d - 1] as f64 + 2.0) / (self.reached[d - 1] as f64 + 3.0)
    }

    /// Expected tokens per step with `k` draft tokens in a chain, divided by the batch's cost.
    pub fn value(&self, k: usize) -> f64 {
        let mut expected = 1.0;
        let mut reach = 1.0;
        for d in 1..=k {
            reach *= self.p(d);
            expected += reach;
        }
        expected / self.relative[k]
    }

    /// The best number of draft tokens; every 8th step at least 1, to keep learning.
    pub fn choose(&self) -> usize {
        let best = (0..self.relative.len()).max_by(|&a, &b| self.value(a).total_cmp(&self.value(b))).unwrap_or(0);
        if best == 0 && self.steps % 8 == 7 && self.relative.len() > 1 {
            1
        } else {
            best
        }
    }

    pub fn observe(&mut self, tree: &DraftTree, outcome: &StepOutcome) {
        self.steps += 1;
        let depth_accepted = outcome.accepted.len();
        // depth d was reachable if the path accepted through d - 1 has a child in the tree
        let mut parent: Option<usize> = None;
        for d in 1..=self.reached.len() {
            let has_child = (0..tree.len()).any(|n| tree.parent(n) == parent && tree.depth(n) == d);
            if !has_child {
                break;
            }
            self.reached[d - 1] += 1;
            if d <= depth_accepted {
                self.accepted[d - 1] += 1;
                parent = Some(outcome.accepted[d - 1]);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_more_when_drafts_are_accepted() {
        let mut b = Budget::new(None, 8);
        let chain = DraftTree::chain(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let all = StepOutcome { emitted: vec![1, 2, 3, 4, 5, 6, 7, 8, 9], accepted: (0..8).collect(), margins: vec![], batch_tokens: 9 };
        for _ in 0..50 {
            b.observe(&chain, &all);
        }
        assert!(b.choose() >= 4, "{}", b.choose());
        let mut b = Budget::new(None, 8);
        let none = StepOutcome { emitted: vec![9], accepted: vec![], margins: vec![], batch_tokens: 9 };
        for _ in 0..50 {
            b.observe(&chain, &none);
        }
        assert_eq!(b.choose(), 0, "drafts that never pay are switched off");
    }
}
