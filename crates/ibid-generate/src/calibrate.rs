//! The cost of verifying N tokens at once, relative to one: what a draft tree may cost before it
//! stops paying. Measured per model file and thread count on this machine, cached on disk: at
//! first use quickly (a few seconds, [`for_session`]), refined by a round at each of the next few
//! server starts, or fully by `ibid calibrate`. What steps really cost against the curve (see
//! [`crate::draft::Budget`]) is kept with it from run to run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::verify::Session;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostCurve {
    pub model_file: String,
    pub model_bytes: u64,
    pub threads: usize,
    /// Tokens already in the cache while measuring.
    pub context_tokens: usize,
    /// (N, median seconds for a batch of N with logits for all).
    pub seconds: Vec<(usize, f64)>,
    /// Every timing so far per size, in the order of `seconds` (empty in curves saved before
    /// timings were kept).
    #[serde(default)]
    pub samples: Vec<(usize, Vec<f64>)>,
    /// Measured quickly at first use: server starts add rounds until it has [`SETTLED_ROUNDS`].
    #[serde(default)]
    pub quick: bool,
    /// The extra cost of multi-row steps seen by earlier runs and what this curve expected for
    /// them (decayed sums, see [`crate::draft::Budget::observed_extra`]): a run starts from their
    /// ratio rather than from 1.
    #[serde(default)]
    pub observed: Option<[f64; 2]>,
}

impl CostCurve {
    /// Cost of a batch of `n` relative to a batch of 1, interpolated between measured points.
    ///
    /// Odd and even batch sizes follow two separate curves on some CPUs (on 2 cores here a batch
    /// of 2k + 1 costs more than one of 2k + 2), so a size not measured is interpolated between
    /// measured sizes of its own parity where there are such sizes on both sides of it (past the
    /// last one: the slope of its parity's last two); batches of 1 (a matrix-vector product) take
    /// part in neither.
    pub fn relative(&self, n: usize) -> f64 {
        let base = self.seconds.first().map_or(1.0, |p| p.1).max(1e-12);
        if self.seconds.is_empty() {
            return n as f64;
        }
        if let Some(&(_, secs)) = self.seconds.iter().find(|p| p.0 == n) {
            return secs / base;
        }
        let same_parity: Vec<(usize, f64)> = self.seconds.iter().copied().filter(|p| p.0 > 1 && p.0 % 2 == n % 2).collect();
        let below = same_parity.iter().filter(|p| p.0 < n).count();
        let above = same_parity.len() - below;
        let bracketed = (below >= 1 && above >= 1) || (above == 0 && below >= 2);
        let points = if bracketed { &same_parity[..] } else { &self.seconds[..] };
        interpolate(points, n) / base
    }
}

impl CostCurve {
    /// Rounds of timings behind every size (the fewest of any size).
    pub fn rounds(&self) -> usize {
        self.samples.iter().map(|(_, t)| t.len()).min().unwrap_or(0)
    }

    /// Whether later runs should still measure rounds of it.
    pub fn settled(&self) -> bool {
        !self.quick || self.rounds() >= SETTLED_ROUNDS
    }

    /// This curve with the timings of `more` (the same sizes, measured later) added: each size's
    /// median over all its timings.
    fn merged(&self, more: &CostCurve) -> CostCurve {
        let mut out = self.clone();
        for (n, new) in &more.samples {
            match out.samples.iter_mut().find(|(m, _)| m == n) {
                Some((_, old)) => old.extend(new),
                None => out.samples.push((*n, new.clone())),
            }
        }
        out.samples.sort_by_key(|(n, _)| *n);
        out.seconds = out.samples.iter().map(|(n, t)| (*n, median(t))).collect();
        out.quick = self.quick && out.rounds() < SETTLED_ROUNDS;
        out
    }
}

fn median(timings: &[f64]) -> f64 {
    let mut t = timings.to_vec();
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied().unwrap_or(0.0)
}

/// Seconds at `n` on the piecewise-linear curve through `pts` (sorted by size), extended past its
/// ends by its first point and its last two points' slope.
fn interpolate(pts: &[(usize, f64)], n: usize) -> f64 {
    let at = pts.partition_point(|p| p.0 < n);
    if at == 0 {
        pts[0].1
    } else if at == pts.len() {
        let (a, b) = (pts[pts.len().saturating_sub(2)], pts[pts.len() - 1]);
        let slope = if b.0 > a.0 { (b.1 - a.1) / (b.0 - a.0) as f64 } else { 0.0 };
        b.1 + slope * (n - b.0) as f64
    } else {
        let (a, b) = (pts[at - 1], pts[at]);
        a.1 + (b.1 - a.1) * (n - a.0) as f64 / (b.0 - a.0) as f64
    }
}

/// Batch sizes measured by default: every size up to 16, then pairs of an even and an odd size, so
/// that each parity has its own curve (see [`CostCurve::relative`]).
pub const DEFAULT_SIZES: [usize; 28] =
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 21, 24, 25, 32, 33, 40, 41, 48, 49, 64, 65];

/// Batch sizes of the quick curve measured at first use: pairs of an even and an odd size, up to
/// 25 rows (larger batches follow the slope of the last two of their parity). On 2 cores sizes up
/// to 33 took 7.3 s with 3 rounds, 40 % of it in 24–33 rows.
pub const QUICK_SIZES: [usize; 15] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 24, 25];
/// Rounds over all sizes at first use (each timing is a median of the rounds).
pub const QUICK_ROUNDS: usize = 3;
/// A quick curve gains a round on each later run until it has this many.
pub const SETTLED_ROUNDS: usize = 7;
/// Tokens in the cache while measuring: a typical prompt.
pub const CONTEXT_TOKENS: usize = 512;

/// The cost curve for `session`'s model and threads: the cached one; at first use a quick one
/// measured now (and cached); with `refine`, a quick one gains a round of timings (and is cached
/// again). Returns the curve and the seconds spent measuring. The session's cache is emptied when
/// it measures (every slot is free after). A curve that cannot be saved is still used (the run warns).
///
/// A round costs about a second and a half of prefill and timings on 2 cores: worth it at a
/// server's start, not on every short command-line run, which refines the curve through the cost
/// of its real steps instead ([`CostCurve::observed`]).
pub fn for_session(session: &mut Session<'_>, refine: bool) -> Result<(CostCurve, f64)> {
    let model = session.model().path().to_path_buf();
    let options = *session.options();
    let cached = load_cached(&model, options.threads);
    if let Some(c) = cached.as_ref().filter(|c| c.settled() || !refine) {
        return Ok((c.clone(), 0.0));
    }
    let started = Instant::now();
    let (sizes, rounds, context) = match &cached {
        Some(c) => (c.seconds.iter().map(|p| p.0).collect::<Vec<_>>(), 1, c.context_tokens),
        None => (QUICK_SIZES.to_vec(), QUICK_ROUNDS, CONTEXT_TOKENS),
    };
    // What fits the session: batches below n_batch, the context and the largest batch in n_ctx.
    let wanted = sizes.len();
    let sizes: Vec<usize> = sizes.into_iter().filter(|&n| n < options.n_batch as usize).collect();
    let largest = sizes.iter().copied().max().unwrap_or(1);
    let room = (options.n_ctx as usize).saturating_sub(largest + 8);
    let curve = match cached {
        // a refinement of some sizes only, or at another context length, would mix two curves
        Some(c) if context > room || sizes.len() < wanted => return Ok((c, 0.0)),
        Some(c) => c.merged(&measure(session, &sizes, context, rounds)?),
        None => CostCurve { quick: true, ..measure(session, &sizes, context.min(room).max(1), rounds)? },
    };
    if let Err(e) = save(&curve, &model) {
        tracing::warn!("the cost curve is used but not kept: {e}");
    }
    Ok((curve, started.elapsed().as_secs_f64()))
}

/// Measure the curve on a session: `context_tokens` in the cache, `reps` timings per size (median).
pub fn measure(session: &mut Session<'_>, sizes: &[usize], context_tokens: usize, reps: usize) -> Result<CostCurve> {
    // Sorted, once each, and 1 always: costs are relative to a batch of one.
    let mut sizes: Vec<usize> = sizes.iter().copied().filter(|&n| n > 0).chain([1]).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let sizes = &sizes[..];
    let max = sizes.iter().copied().max().unwrap_or(1);
    if max + 1 > session.options().n_batch as usize {
        return Err(Error::Argument(format!("batches of {max} need --batch of at least {}", max + 1)));
    }
    // A real-looking context: the model's own tokens 100..100+context_tokens.
    let prompt: Vec<u32> = (0..context_tokens.max(1) as u32).map(|i| 100 + i % 5000).collect();
    session.prefill(&prompt)?;
    session.time_batch(1)?; // warm up
                            // Rounds over all sizes rather than all timings of one size in a row, so that a slow spell of
                            // the machine spreads over every size instead of bending the curve at one.
    let mut timings = vec![Vec::with_capacity(reps.max(1)); sizes.len()];
    for _ in 0..reps.max(1) {
        for (t, &n) in timings.iter_mut().zip(sizes) {
            t.push(session.time_batch(n)?);
        }
    }
    // the measuring context is no one's: every slot free again
    session.reset();
    let seconds = sizes.iter().zip(&timings).map(|(&n, t)| (n, median(t))).collect();
    let samples = sizes.iter().copied().zip(timings).collect();
    let (model_file, model_bytes) = model_id(session.model().path());
    Ok(CostCurve {
        model_file,
        model_bytes,
        threads: session.options().threads,
        context_tokens,
        seconds,
        samples,
        quick: false,
        observed: None,
    })
}

/// Where the curve for a model file and thread count is cached.
/// ibid's cache folder: `$XDG_CACHE_HOME/ibid`, else `~/.cache/ibid`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("ibid")
}

/// A model file's name and size: what cached files for it are keyed by (a file replaced by another
/// of the same name but a new size gets its own).
pub fn model_id(model: &Path) -> (String, u64) {
    let name = model.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    (name, std::fs::metadata(model).map_or(0, |m| m.len()))
}

pub fn cache_path(model: &Path, threads: usize) -> PathBuf {
    let (name, size) = model_id(model);
    let kernels = crate::llama::kernels().tag();
    cache_dir().join(format!("cost-{name}-{size}-t{threads}-{kernels}.json"))
}

pub fn load_cached(model: &Path, threads: usize) -> Option<CostCurve> {
    let text = std::fs::read(cache_path(model, threads)).ok()?;
    let curve: CostCurve = serde_json::from_slice(&text).ok()?;
    // a curve that could mislead the budget is measured again rather than trusted
    let sane = !curve.seconds.is_empty() && curve.seconds.iter().all(|&(n, s)| n > 0 && s.is_finite() && s > 0.0);
    sane.then_some(curve)
}

/// Keep what a run's steps cost against the cached curve (see [`CostCurve::observed`]) with it.
pub fn keep_observed(model: &Path, threads: usize, observed: [f64; 2]) -> Result<()> {
    match load_cached(model, threads) {
        Some(curve) => save(&CostCurve { observed: Some(observed), ..curve }, model).map(drop),
        None => Ok(()),
    }
}

/// Where what the draft sources' estimates turned out to be worth is kept for a model file
/// (see [`crate::draft::Learnt`]): beside its cost curves, one file for all thread counts.
pub fn learnt_path(model: &Path) -> PathBuf {
    let (name, size) = model_id(model);
    cache_dir().join(format!("accept-{name}-{size}.json"))
}

/// Save atomically (write then rename).
pub fn save(curve: &CostCurve, model: &std::path::Path) -> Result<PathBuf> {
    let path = cache_path(model, curve.threads);
    crate::error::write_atomic(&path, &serde_json::to_vec_pretty(curve).expect("serializes"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_and_extrapolates() {
        let c = CostCurve { threads: 1, seconds: vec![(1, 1.0), (2, 2.0), (4, 3.0)], ..CostCurve::default() };
        assert_eq!(c.relative(1), 1.0);
        assert_eq!(c.relative(3), 2.5);
        assert_eq!(c.relative(4), 3.0);
        assert_eq!(c.relative(6), 4.0);
    }

    #[test]
    fn odd_and_even_sizes_interpolate_on_their_own_curves() {
        // Odd batches cost more than the next even one, as measured on 2 cores.
        let c = CostCurve {
            threads: 1,
            seconds: vec![(1, 1.0), (2, 1.2), (3, 2.0), (4, 1.8), (8, 3.0), (9, 3.8), (16, 5.0), (17, 6.0)],
            ..CostCurve::default()
        };
        // Measured sizes are taken as they are.
        assert_eq!(c.relative(3), 2.0);
        assert_eq!(c.relative(4), 1.8);
        // Between sizes of the same parity.
        assert!((c.relative(6) - 2.4).abs() < 1e-9);
        assert!((c.relative(5) - (2.0 + 1.8 / 6.0 * 2.0)).abs() < 1e-9);
        assert!((c.relative(13) - (3.8 + 2.2 * 4.0 / 8.0)).abs() < 1e-9);
        // Every odd size between measured pairs stays above the even size after it.
        for n in (3..17).step_by(2) {
            assert!(c.relative(n) > c.relative(n + 1), "{n}");
        }
        // Past the end, each parity's last slope.
        assert!((c.relative(20) - (5.0 + 4.0 * 2.0 / 8.0)).abs() < 1e-9);
        assert!((c.relative(19) - (6.0 + 2.0 * 2.2 / 8.0)).abs() < 1e-9);
    }

    #[test]
    fn a_quick_curve_gains_rounds_until_settled() {
        let timed = |rounds: &[&[f64]]| CostCurve {
            threads: 1,
            seconds: vec![],
            samples: vec![(1, rounds[0].to_vec()), (2, rounds[1].to_vec())],
            ..CostCurve::default()
        };
        let mut c = CostCurve { quick: true, ..timed(&[&[1.0, 1.2, 0.9], &[2.0, 1.8, 5.0]]) };
        assert_eq!(c.rounds(), 3);
        assert!(!c.settled());
        for round in 0..SETTLED_ROUNDS - 3 {
            assert!(!c.settled(), "{round}");
            c = c.merged(&timed(&[&[1.1], &[1.9]]));
        }
        assert_eq!(c.rounds(), SETTLED_ROUNDS);
        assert!(c.settled() && !c.quick);
        // each size's median over all its timings
        assert_eq!(c.seconds, vec![(1, 1.1), (2, 1.9)]);
        // a full calibration (not quick) is settled whatever its rounds
        assert!(timed(&[&[1.0], &[2.0]]).settled());
    }
}
