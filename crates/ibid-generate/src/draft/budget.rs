//! How many draft nodes to verify per step: the count that maximizes expected tokens per unit
//! of time, from the calibrated cost of a batch of N tokens and each node's probability of being
//! accepted (its path probability, from the merged tree).

use crate::calibrate::CostCurve;

pub struct Budget {
    /// Cost of a batch of n + 1 tokens relative to 1, for n = 0..=max_batch - 1.
    relative: Vec<f64>,
    /// Most nodes in one tree.
    max: usize,
    /// Most nodes in one tree for now (slow start, see [`Budget::observe_tree`]).
    cap: usize,
    /// What verification steps cost here, learnt while generating (see [`Budget::observe`]).
    observed: ObservedCost,
}

/// The curve is measured on bare decodes at one context length; a verification step also walks
/// the tree, reads logits for the sources and moves cache cells, the context grows, and a machine
/// under other load is slower than when it was calibrated. So each step's time is kept: the
/// time of a one-row step (a moving average), and for larger batches how much more than one row
/// they cost against how much more the curve said. Their ratio scales the curve's extra cost.
#[derive(Debug, Clone, Default)]
struct ObservedCost {
    single: Option<f64>,
    extra_seen: f64,
    extra_expected: f64,
}

/// The curve's own word counts as this much extra cost (in one-row units) seen at its value.
const CURVE_WEIGHT: f64 = 6.0;
/// Each new observation keeps this share of the older ones: costs drift as the context grows.
const KEEP: f64 = 0.97;
/// Single-row steps: the moving average's weight of the newest.
const SINGLE_RATE: f64 = 0.1;

/// Relative batch costs measured on a 2-core machine (2 threads, Gemma 3 270M, exact kernels, the
/// mean of two `ibid calibrate` runs), used only by library callers that give no curve: the command
/// line and the server always measure this machine's curve first (see
/// [`crate::calibrate::for_session`]), since another machine's curve misjudges what drafting costs
/// here (a copy prompt budgeted with another model's curve ran at 0.92× plain). Odd sizes
/// cost more than the next even one there.
const DEFAULT_CURVE: [(usize, f64); 28] = [
    (1, 1.0),
    (2, 1.21),
    (3, 1.96),
    (4, 1.77),
    (5, 2.55),
    (6, 2.24),
    (7, 3.07),
    (8, 2.75),
    (9, 3.55),
    (10, 3.22),
    (11, 3.98),
    (12, 3.67),
    (13, 4.43),
    (14, 4.10),
    (15, 4.94),
    (16, 4.57),
    (20, 5.56),
    (21, 6.35),
    (24, 6.52),
    (25, 7.29),
    (32, 8.30),
    (33, 9.11),
    (40, 10.19),
    (41, 10.93),
    (48, 11.79),
    (49, 12.86),
    (64, 15.82),
    (65, 16.38),
];

/// The largest tree `--budget auto` considers: long copies pay for long chains.
pub const MAX_AUTO_BUDGET: usize = 48;

impl Budget {
    /// Trees of at most `max` nodes, one per step.
    pub fn new(curve: Option<&CostCurve>, max: usize) -> Self {
        Self::for_slots(curve, max, 1)
    }

    /// Trees of at most `max` nodes for each of up to `slots` sequences verified in one batch.
    pub fn for_slots(curve: Option<&CostCurve>, max: usize, slots: usize) -> Self {
        let default = CostCurve { threads: 1, seconds: DEFAULT_CURVE.to_vec(), ..CostCurve::default() };
        let curve = curve.unwrap_or(&default);
        let relative = (0..slots.max(1) * (max + 1)).map(|n| curve.relative(n + 1).max(1.0)).collect();
        // what earlier runs saw, unless it makes no sense
        let observed = match curve.observed {
            Some([seen, expected]) if seen.is_finite() && expected.is_finite() && seen >= 0.0 && expected >= 0.0 => {
                ObservedCost { single: None, extra_seen: seen, extra_expected: expected }
            }
            _ => ObservedCost::default(),
        };
        Budget { relative, max, cap: START_CAP.min(max), observed }
    }

    /// A verified tree of `drafted` nodes had `accepted` of them accepted: the cap on tree sizes
    /// doubles when at least half were accepted (up to the most allowed) and halves when fewer
    /// were (down to `MIN_CAP`), as TCP's congestion window does.
    ///
    /// Why: a long exact match in the context is near-certain by its estimate, and at a cold start
    /// nothing says otherwise, so the first tree after one can be 48 nodes. On a held-out Rust
    /// prompt two such trees failed at their first tokens (5 of 96 accepted) and cost 26 single
    /// tokens of time: 0.78× plain. Starting at 8 nodes bounds what a failure costs (about 2.7
    /// tokens here), while a copy that holds reaches 48 nodes in three steps.
    pub fn observe_tree(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.cap = if 2 * accepted >= drafted { (2 * self.cap).min(self.max) } else { (self.cap / 2).max(MIN_CAP.min(self.max)) };
    }

    /// The most nodes a tree may have now.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The extra cost of multi-row steps seen so far and what the curve expected for them
    /// (decayed sums): kept with the curve for the next run ([`CostCurve::observed`]).
    pub fn observed_extra(&self) -> [f64; 2] {
        [self.observed.extra_seen, self.observed.extra_expected]
    }

    /// A verification step of `rows` tokens in one batch took `seconds`.
    pub fn observe(&mut self, rows: usize, seconds: f64) {
        let o = &mut self.observed;
        if !(seconds.is_finite() && seconds > 0.0) || rows == 0 {
            return;
        }
        if rows == 1 {
            o.single = Some(o.single.map_or(seconds, |s| s + SINGLE_RATE * (seconds - s)));
            return;
        }
        let (Some(single), Some(&expected)) = (o.single, self.relative.get(rows - 1)) else { return };
        // a step slowed by something else (a page fault, another process) counts at most 3× the
        // curve's extra cost, so one outlier does not switch drafting off
        let expected_extra = expected - 1.0;
        let seen_extra = (seconds / single - 1.0).clamp(0.0, 3.0 * expected_extra);
        o.extra_seen = o.extra_seen * KEEP + seen_extra;
        o.extra_expected = o.extra_expected * KEEP + expected_extra;
    }

    /// How much the extra cost of a batch seen so far differs from the curve's (1: as measured).
    pub fn cost_scale(&self) -> f64 {
        let o = &self.observed;
        ((o.extra_seen + CURVE_WEIGHT) / (o.extra_expected + CURVE_WEIGHT)).clamp(0.5, 3.0)
    }

    /// Cost of a batch of `n + 1` rows relative to one row, as observed.
    fn cost(&self, n: usize) -> f64 {
        1.0 + self.cost_scale() * (self.relative[n] - 1.0)
    }

    /// The most nodes this budget ever allows in one tree.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Expected tokens per step with the first `k` nodes (path probabilities `path_p`, best
    /// first), divided by the cost of their batch. Each accepted node adds one token.
    pub fn value(&self, path_p: &[f64], k: usize) -> f64 {
        (1.0 + path_p[..k].iter().sum::<f64>()) / self.cost(k)
    }

    /// How many of the nodes (best first) to verify: none unless drafting is expected to pay.
    pub fn choose(&mut self, path_p: &[f64]) -> usize {
        self.choose_joint(&[path_p])[0]
    }

    /// How many nodes of each tree to verify when the trees of several sequences share one batch
    /// (each `path_p` best first): the cut that maximizes expected tokens of all sequences per
    /// unit of the whole batch's cost. Nodes enter best first across trees, so each tree keeps a
    /// prefix of its order. A cut that drafts anything must beat drafting nothing by `MARGIN`:
    /// the probabilities are lower bounds already, the margin covers the costs the curve does
    /// not see (drafting itself, a slower step now and then).
    ///
    /// There is no forced exploration: nodes the cut leaves out are judged anyway (shadow nodes,
    /// see [`super::Shadow`]), so a source keeps learning while drafting does not pay. A forced
    /// one-node tree every 8th step cost 0.74 of a token on this machine's curve each time
    /// (2 rows = 1.74 single tokens) for a node accepted 45 % of the time.
    pub fn choose_joint(&mut self, path_ps: &[&[f64]]) -> Vec<usize> {
        let m = path_ps.len();
        let mut counts = vec![0usize; m];
        if m == 0 {
            return counts;
        }
        let room = self.relative.len().saturating_sub(m);
        // Every node as (probability, tree), best first; ties keep tree order.
        let mut all: Vec<(f64, usize)> =
            path_ps.iter().enumerate().flat_map(|(t, p)| p.iter().take(self.cap).map(move |&q| (q, t))).collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.truncate(room);
        let plain = m as f64 / self.cost(m - 1);
        let (mut best, mut best_value, mut sum) = (0, plain * (1.0 + MARGIN), m as f64);
        for (n, &(p, _)) in all.iter().enumerate() {
            sum += p;
            let value = sum / self.cost(m + n);
            if value > best_value {
                (best, best_value) = (n + 1, value);
            }
        }
        for &(_, t) in &all[..best] {
            counts[t] += 1;
        }
        counts
    }
}

/// How much more than plain decoding a draft must be expected to yield per unit of time.
const MARGIN: f64 = 0.03;
/// The cap on tree sizes at the start of a run, and its floor.
const START_CAP: usize = 8;
const MIN_CAP: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget whose trees have grown to its most allowed (as after accepted trees).
    fn grown(curve: Option<&CostCurve>, max: usize) -> Budget {
        let mut b = Budget::new(curve, max);
        while b.cap() < max {
            b.observe_tree(1, 1);
        }
        b
    }

    #[test]
    fn drafts_only_what_pays() {
        let mut b = grown(None, 16);
        let sure = vec![0.99; 16];
        assert!(b.choose(&sure) >= 8, "{}", b.choose(&sure));
        // a node less rather than an odd batch, which costs more than the next even one
        assert_eq!(b.choose(&sure), 15);
        let mut b = Budget::new(None, 16);
        let hopeless = vec![0.01; 16];
        assert_eq!(b.choose(&hopeless), 0, "drafts that cannot pay are switched off");
        // one good node then poor ones: just the good one
        let mut b = Budget::new(None, 16);
        assert_eq!(b.choose(&[0.9, 0.05, 0.04, 0.03]), 1);
        // no forced exploration: hopeless drafts stay off, step after step
        let mut b = Budget::new(None, 16);
        assert!((0..64).all(|_| b.choose(&hopeless) == 0));
        // a gain within the margin is not worth the risk; one beyond it is taken
        let curve = CostCurve { threads: 1, seconds: vec![(1, 1.0), (2, 1.5)], ..CostCurve::default() };
        let mut b = Budget::new(Some(&curve), 1);
        assert_eq!(b.choose(&[0.52]), 0, "1.52 tokens for 1.5: 1.3 % better than plain");
        assert_eq!(b.choose(&[0.56]), 1, "1.56 tokens for 1.5: 4 % better");
    }

    #[test]
    fn trees_start_small_and_grow_while_they_are_accepted() {
        let mut b = Budget::new(None, 48);
        let sure = vec![0.999; 48];
        // a cold start verifies at most 8 nodes, however sure the drafts look (7: an even batch)
        assert_eq!(b.choose(&sure), 7);
        // accepted: 16, 32, then the most allowed
        for want in [16, 32, 48, 48] {
            b.observe_tree(8, 8);
            assert_eq!(b.cap(), want);
        }
        // a failed tree halves the cap, down to 4
        for want in [24, 12, 6, 4, 4] {
            b.observe_tree(20, 3);
            assert_eq!(b.cap(), want);
        }
        assert!(b.choose(&sure) <= 4);
        // half accepted is accepted; steps that drafted nothing change nothing
        b.observe_tree(4, 2);
        assert_eq!(b.cap(), 8);
        b.observe_tree(0, 0);
        assert_eq!(b.cap(), 8);
        // a budget below the start cap keeps its own limit
        let mut small = Budget::new(None, 3);
        assert_eq!(small.cap(), 3);
        small.observe_tree(3, 0);
        assert_eq!(small.cap(), 3);
    }

    #[test]
    fn steps_that_cost_more_than_the_curve_says_shrink_the_trees() {
        let path_p = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4];
        let reference = grown(None, 12).choose(&path_p);
        // steps that cost what the curve says change nothing
        let mut b = grown(None, 12);
        for _ in 0..50 {
            b.observe(1, 0.014);
            b.observe(9, 0.014 * DEFAULT_CURVE[8].1);
        }
        assert!((b.cost_scale() - 1.0).abs() < 1e-9, "{}", b.cost_scale());
        assert_eq!(b.choose(&path_p), reference);
        // batches whose extra cost is half again the curve's: fewer nodes, and the learnt scale
        let mut b = grown(None, 12);
        for _ in 0..50 {
            b.observe(1, 0.014);
            b.observe(9, 0.014 * (1.0 + 1.5 * (DEFAULT_CURVE[8].1 - 1.0)));
        }
        assert!((b.cost_scale() - 1.5).abs() < 0.1, "{}", b.cost_scale());
        let fewer = b.choose(&path_p);
        assert!(fewer < reference, "{fewer} vs {reference}");
        // cheaper batches: more nodes
        let mut b = grown(None, 12);
        for _ in 0..50 {
            b.observe(1, 0.014);
            b.observe(9, 0.014 * (1.0 + 0.6 * (DEFAULT_CURVE[8].1 - 1.0)));
        }
        assert!(b.choose(&path_p) > reference);
        // one wild outlier moves the scale a little, not to its own ratio; nonsense is ignored
        let mut b = Budget::new(None, 12);
        b.observe(1, 0.014);
        b.observe(9, 10.0);
        b.observe(9, f64::NAN);
        b.observe(0, 1.0);
        assert!(b.cost_scale() < 2.5, "{}", b.cost_scale());
        // without a one-row step to compare with, nothing is learnt
        let mut b = Budget::new(None, 12);
        b.observe(9, 1.0);
        assert_eq!(b.cost_scale(), 1.0);

        // the next run starts from what this one saw; nonsense in the file is ignored
        let mut b = grown(None, 12);
        for _ in 0..50 {
            b.observe(1, 0.014);
            b.observe(9, 0.014 * (1.0 + 1.5 * (DEFAULT_CURVE[8].1 - 1.0)));
        }
        let curve = CostCurve { seconds: DEFAULT_CURVE.to_vec(), observed: Some(b.observed_extra()), ..CostCurve::default() };
        let next = Budget::new(Some(&curve), 12);
        assert_eq!(next.cost_scale(), b.cost_scale());
        for bad in [[f64::NAN, 1.0], [-1.0, 2.0], [1.0, f64::INFINITY]] {
            let curve = CostCurve { seconds: DEFAULT_CURVE.to_vec(), observed: Some(bad), ..CostCurve::default() };
            assert_eq!(Budget::new(Some(&curve), 12).cost_scale(), 1.0, "{bad:?}");
        }
    }

    #[test]
    fn joint_budget_matches_brute_force_and_keeps_prefixes() {
        let curve = CostCurve { threads: 1, seconds: DEFAULT_CURVE.to_vec(), ..CostCurve::default() };
        let trees: Vec<Vec<f64>> = vec![vec![0.95, 0.9, 0.85, 0.2], vec![0.3, 0.1], vec![0.99, 0.97, 0.96, 0.9, 0.6, 0.3]];
        let views: Vec<&[f64]> = trees.iter().map(Vec::as_slice).collect();
        let mut b = Budget::for_slots(Some(&curve), 8, 3);
        let chosen = b.choose_joint(&views);
        // brute force over every combination of prefixes
        let value = |c: &[usize]| {
            let tokens: f64 = c.iter().zip(&trees).map(|(&k, t)| 1.0 + t[..k].iter().sum::<f64>()).sum();
            tokens / curve.relative(3 + c.iter().sum::<usize>())
        };
        let mut best = (0.0, vec![]);
        for a in 0..=4 {
            for b2 in 0..=2 {
                for c in 0..=6 {
                    let v = value(&[a, b2, c]);
                    if v > best.0 + 1e-12 {
                        best = (v, vec![a, b2, c]);
                    }
                }
            }
        }
        assert!((value(&chosen) - best.0).abs() < 1e-9, "{chosen:?} vs {:?}", best.1);
        // one tree alone: the same as choose
        let mut single = Budget::for_slots(Some(&curve), 8, 3);
        let mut plain = Budget::new(Some(&curve), 8);
        assert_eq!(single.choose_joint(&[&trees[2]]), vec![plain.choose(&trees[2])]);
    }
}
