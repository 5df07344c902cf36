//! How many draft nodes to verify per step: the count that maximizes expected tokens per unit
//! of time, from the calibrated cost of a batch of N tokens and each node's probability of being
//! accepted (its path probability, from the merged tree).

use crate::calibrate::CostCurve;

pub struct Budget {
    /// Cost of a batch of n + 1 tokens relative to 1, for n = 0..=max.
    relative: Vec<f64>,
    steps: u64,
}

/// Relative batch costs measured on a 2-core machine (2 threads, Gemma 3 270M), used until
/// `ibid calibrate` has run for the model.
const DEFAULT_CURVE: [(usize, f64); 16] = [
    (1, 1.0), (2, 1.32), (3, 2.11), (4, 1.91), (5, 2.77), (6, 2.40), (8, 2.90), (10, 3.38), (12, 4.01), (16, 4.96),
    (20, 6.17), (24, 7.01), (32, 8.54), (40, 10.94), (48, 12.89), (64, 16.88),
];

/// The largest tree `--budget auto` considers: long copies pay for long chains.
pub const MAX_AUTO_BUDGET: usize = 48;

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
        Budget { relative, steps: 0 }
    }

    /// The most nodes this budget ever allows.
    pub fn max(&self) -> usize {
        self.relative.len() - 1
    }

    /// Expected tokens per step with the first `k` nodes (path probabilities `path_p`, best
    /// first), divided by the cost of their batch. Each accepted node adds one token.
    pub fn value(&self, path_p: &[f64], k: usize) -> f64 {
        (1.0 + path_p[..k].iter().sum::<f64>()) / self.relative[k]
    }

    /// How many of the nodes (best first) to verify; every 8th step at least 1, so that the
    /// sources keep learning when drafting does not pay.
    pub fn choose(&mut self, path_p: &[f64]) -> usize {
        self.steps += 1;
        let n = path_p.len().min(self.max());
        let best = (0..=n).max_by(|&a, &b| self.value(path_p, a).total_cmp(&self.value(path_p, b))).unwrap_or(0);
        if best == 0 && n > 0 && self.steps % 8 == 0 {
            1
        } else {
            best
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_only_what_pays() {
        let mut b = Budget::new(None, 16);
        let sure = vec![0.99; 16];
        assert!(b.choose(&sure) >= 8, "{}", b.choose(&sure));
        let mut b = Budget::new(None, 16);
        let hopeless = vec![0.01; 16];
        assert_eq!(b.choose(&hopeless), 0, "drafts that cannot pay are switched off");
        // one good node then poor ones: just the good one
        let mut b = Budget::new(None, 16);
        assert_eq!(b.choose(&[0.9, 0.05, 0.04, 0.03]), 1);
        // exploration: at least one node every 8th step
        let mut b = Budget::new(None, 16);
        let chosen: Vec<usize> = (0..16).map(|_| b.choose(&hopeless)).collect();
        assert_eq!(chosen.iter().filter(|&&k| k == 1).count(), 2);
    }
}
