//! How the next token is chosen from the target's logits: the argmax, or a sample from the
//! processed distribution (temperature, top-k, top-p) with a seeded generator.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to `top_p` (1: all).
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::Argument(format!("temperature must be 0 or more, not {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Argument(format!("top_p must be in (0, 1], not {}", self.top_p)));
        }
        Ok(())
    }
}

/// The index of the largest logit (the lowest index among equals; NaNs are passed over).
pub fn argmax(logits: &[f32]) -> u32 {
    first_max(logits).map_or(0, |(b, _)| b as u32)
}

/// The two largest logits: (best token as [`argmax`] finds it, its logit, the largest logit of
/// the rest). Run on every token a step emits, over a vocabulary-sized row each time.
pub fn top2(logits: &[f32]) -> (u32, f32, f32) {
    let Some((b, best)) = first_max(logits) else {
        return (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
    };
    let second = max_value(&logits[..b]).max(max_value(&logits[b + 1..]));
    (b as u32, best, second)
}

/// The first position of the largest value and that value (position 0 when no value beats minus
/// infinity); `None` for no values.
fn first_max(values: &[f32]) -> Option<(usize, f32)> {
    let best = max_value(values);
    if best == f32::NEG_INFINITY {
        // Nothing beats minus infinity, so a plain scan keeps its first position (not the first
        // minus infinity, which would come after a NaN).
        return (!values.is_empty()).then_some((0, best));
    }
    values.iter().position(|&l| l == best).map(|b| (b, best))
}

/// The largest value that is not NaN (minus infinity when there is none). Kept in independent
/// lanes so that the compiler turns the loop into vector maxima: best, position and runner-up of
/// a row of 262,144 logits take about a third of the time of the two plain loops they replaced.
fn max_value(values: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            if x > *m {
                *m = x;
            }
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The `k` largest logits as (token, logit), best first (ties: smaller token first). Skips whole
/// blocks below the current k-th best, which is nearly all of a vocabulary-sized row: blocks of
/// 256 with a vectorized maximum take 0.05–0.08 ms a row against 0.13–0.22 ms for blocks of 64
/// and a plain loop. The recycling matrix reads every verified row through here.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    // k beyond the row is the whole row (a request's top_k of 4e9 once asked for 4e9 slots)
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    if k > INSERT_UP_TO {
        return top_k_by_selection(logits, k);
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    const BLOCK: usize = 256;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        if best.len() == k && max_value(block) <= best[k - 1].1 {
            continue;
        }
        for (j, &l) in block.iter().enumerate() {
            if best.len() < k || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, v)| v >= l);
                best.insert(at, ((b * BLOCK + j) as u32, l));
                best.truncate(k);
            }
        }
    }
    best
}

/// Up to this k, [`top_k`] keeps a sorted list and inserts into it (O(k) per insertion, but rare
/// insertions on a real row); beyond, it selects in O(n) and sorts the k kept. With the sorted
/// list alone, top_k = the vocabulary took 8.3 s for 8 tokens against 0.23 s.
const INSERT_UP_TO: usize = 64;

/// [`top_k`] for large k: the same values in the same order (best first, ties: smaller token
/// first), by selection and a sort of the kept (NaN counts as minus infinity).
fn top_k_by_selection(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let order = |a: &(u32, f32), b: &(u32, f32)| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0));
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, order);
        all.truncate(k);
    }
    all.sort_unstable_by(order);
    all
}

/// The processed distribution: tokens and probabilities (sorted, most likely first).
pub fn distribution(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f64)> {
    let t = f64::from(params.temperature);
    let mut cands: Vec<(u32, f64)> = if params.top_k > 0 {
        top_k(logits, params.top_k).into_iter().map(|(i, l)| (i, f64::from(l))).collect()
    } else {
        let mut all: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, f64::from(l))).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all
    };
    let max = cands.first().map_or(0.0, |c| c.1);
    let mut sum = 0.0;
    for c in cands.iter_mut() {
        c.1 = ((c.1 - max) / t).exp();
        sum += c.1;
    }
    for c in cands.iter_mut() {
        c.1 /= sum;
    }
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = cands.len();
        for (i, c) in cands.iter().enumerate() {
            acc += c.1;
            if acc >= f64::from(params.top_p) {
                keep = i + 1;
                break;
            }
        }
        cands.truncate(keep);
        let s: f64 = cands.iter().map(|c| c.1).sum();
        for c in cands.iter_mut() {
            c.1 /= s;
        }
    }
    cands
}

/// Draw from a distribution with one uniform number in [0, 1).
pub fn draw(dist: &[(u32, f64)], u: f64) -> u32 {
    let mut acc = 0.0;
    for &(t, p) in dist {
        acc += p;
        if u < acc {
            return t;
        }
    }
    dist.last().map_or(0, |d| d.0)
}

/// Chooses tokens: greedy, or sampling with its own generator (one draw per chosen token, so plain
/// and speculative decoding with the same seed consume the same random numbers).
pub struct Chooser {
    pub params: SamplingParams,
    rng: rand::rngs::StdRng,
}

impl Chooser {
    pub fn new(params: SamplingParams) -> Self {
        Chooser { rng: rand::rngs::StdRng::seed_from_u64(params.seed), params }
    }

    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let u: f64 = self.rng.gen();
        draw(&distribution(logits, &self.params), u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain loops these functions replace: the reference they must equal.
    fn reference_top2(logits: &[f32]) -> (u32, f32, f32) {
        let (mut b, mut bv, mut sv) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
        for (i, &l) in logits.iter().enumerate() {
            if l > bv {
                (sv, bv, b) = (bv, l, i);
            } else if l > sv {
                sv = l;
            }
        }
        (b as u32, bv, sv)
    }

    proptest::proptest! {
        #[test]
        fn argmax_and_top2_equal_a_plain_scan(
            // Few distinct values, so ties (and ties of the best) are common; any length, so
            // every remainder of the vector lanes occurs.
            codes in proptest::collection::vec(0u8..12, 0..100),
        ) {
            let logits: Vec<f32> = codes
                .iter()
                .map(|&c| match c {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => -0.0,
                    3 => 0.0,
                    c => c as f32 * 0.5 - 3.0,
                })
                .collect();
            let want = reference_top2(&logits);
            let got = top2(&logits);
            proptest::prop_assert_eq!(got.0, want.0);
            // Equal as numbers: the best of -0.0 and 0.0 may come back as either.
            proptest::prop_assert!(got.1 == want.1 && got.2 == want.2, "{:?} != {:?}", got, want);
            proptest::prop_assert_eq!(argmax(&logits), got.0);
        }
    }

    proptest::proptest! {
        #[test]
        fn top_k_by_selection_equals_the_sorted_list_and_a_full_sort(
            codes in proptest::collection::vec(0u8..40, 0..700),
            k in 0usize..800,
        ) {
            // few distinct values: ties everywhere, ordered by token
            let logits: Vec<f32> = codes.iter().map(|&c| if c == 0 { f32::NEG_INFINITY } else { c as f32 * 0.25 - 4.0 }).collect();
            let mut sorted: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            sorted.truncate(k);
            proptest::prop_assert_eq!(top_k(&logits, k), sorted.clone());
            if k > 0 && k <= logits.len() {
                proptest::prop_assert_eq!(top_k_by_selection(&logits, k), sorted);
            }
        }
    }

    #[test]
    fn top_k_beyond_the_row_is_the_whole_row_in_order() {
        let logits: Vec<f32> = (0..262_144u32).map(|i| ((i * 7919) % 1000) as f32).collect();
        // (with the sorted list alone, each of these took minutes, or aborted on allocating k slots)
        for k in [usize::MAX, 1 << 62, 4_000_000_000, 262_144, 262_145] {
            let got = top_k(&logits, k);
            assert_eq!(got.len(), 262_144);
            assert!(got.windows(2).all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
        }
        let p = SamplingParams { temperature: 1.0, top_k: usize::MAX, top_p: 1.0, seed: 0 };
        assert_eq!(distribution(&logits[..10], &p).len(), 10);
    }

    #[test]
    fn a_row_without_a_finite_logit_picks_its_first_token_as_a_plain_scan_does() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        for row in [vec![nan, -inf], vec![-inf, nan, -inf], vec![nan, nan], vec![-inf]] {
            assert_eq!(top2(&row), reference_top2(&row), "{row:?}");
            assert_eq!(argmax(&row), 0, "{row:?}");
        }
        assert_eq!(top2(&[nan, -inf, 2.0]), (2, 2.0, f32::NEG_INFINITY));
        assert_eq!(top2(&[]), (0, f32::NEG_INFINITY, f32::NEG_INFINITY));
        assert_eq!(argmax(&[inf, nan]), 0);
    }

    #[test]
    fn picks_and_processes() {
        let logits = [0.0, 3.0, 1.0, 3.0, -1.0];
        assert_eq!(argmax(&logits), 1);
        assert_eq!(top2(&logits), (1, 3.0, 3.0));
        assert_eq!(top_k(&logits, 3), vec![(1, 3.0), (3, 3.0), (2, 1.0)]);
        let p = SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 0 };
        let d = distribution(&logits, &p);
        assert_eq!(d.len(), 2);
        assert!((d[0].1 - 0.5).abs() < 1e-12);
        // the two best tokens have ~0.44 each: 0.5 needs both, 0.4 one
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 0 };
        assert_eq!(distribution(&logits, &p).len(), 2);
        assert_eq!(distribution(&logits, &SamplingParams { top_p: 0.4, ..p }).len(), 1);
        assert_eq!(draw(&[(7, 0.25), (9, 0.75)], 0.2), 7);
        assert_eq!(draw(&[(7, 0.25), (9, 0.75)], 0.3), 9);
        assert!(SamplingParams { temperature: -1.0, ..p }.validate().is_err());
        assert!(SamplingParams { top_p: 0.0, ..p }.validate().is_err());
    }
}
