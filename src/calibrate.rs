//! The cost of verifying N tokens at once, relative to one: what a draft tree may cost before it
//! stops paying. Measured once per model file and thread count, cached on disk.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::verify::Session;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostCurve {
    pub model_file: String,
    pub model_bytes: u64,
    pub threads: usize,
    /// Tokens already in the cache while measuring.
    pub context_tokens: usize,
    /// (N, median seconds for a batch of N with logits for all).
    pub seconds: Vec<(usize, f64)>,
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
        let same_parity: Vec<(usize, f64)> =
            self.seconds.iter().copied().filter(|p| p.0 > 1 && p.0 % 2 == n % 2).collect();
        let below = same_parity.iter().filter(|p| p.0 < n).count();
        let above = same_parity.len() - below;
        let bracketed = (below >= 1 && above >= 1) || (above == 0 && below >= 2);
        let points = if bracketed { &same_parity[..] } else { &self.seconds[..] };
        interpolate(points, n) / base
    }
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

/// Measure the curve on a session: `context_tokens` in the cache, `reps` timings per size (median).
pub fn measure(session: &mut Session<'_>, sizes: &[usize], context_tokens: usize, reps: usize) -> Result<CostCurve> {
    // Sorted, once each, and 1 always: costs are relative to a batch of one.
    let mut sizes: Vec<usize> = sizes.iter().copied().filter(|&n| n > 0).chain([1]).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let sizes = &sizes[..];
    let max = sizes.iter().copied().max().unwrap_or(1);
    if max + 1 > session.options().n_batch as usize {
        return Err(Error::Invalid(format!("batches of {max} need --batch of at least {}", max + 1)));
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
    let seconds = sizes
        .iter()
        .zip(&mut timings)
        .map(|(&n, t)| {
            t.sort_by(f64::total_cmp);
            (n, t[t.len() / 2])
        })
        .collect();
    let path = session.model().path();
    Ok(CostCurve {
        model_file: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        model_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        threads: session.options().threads,
        context_tokens,
        seconds,
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

pub fn cache_path(model: &std::path::Path, threads: usize) -> PathBuf {
    let name = model.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let size = std::fs::metadata(model).map(|m| m.len()).unwrap_or(0);
    let kernels = crate::llama::kernels().tag();
    cache_dir().join(format!("cost-{name}-{size}-t{threads}-{kernels}.json"))
}

pub fn load_cached(model: &std::path::Path, threads: usize) -> Option<CostCurve> {
    let text = std::fs::read(cache_path(model, threads)).ok()?;
    serde_json::from_slice(&text).ok()
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
        let c = CostCurve {
            model_file: "m".into(),
            model_bytes: 1,
            threads: 1,
            context_tokens: 0,
            seconds: vec![(1, 1.0), (2, 2.0), (4, 3.0)],
        };
        assert_eq!(c.relative(1), 1.0);
        assert_eq!(c.relative(3), 2.5);
        assert_eq!(c.relative(4), 3.0);
        assert_eq!(c.relative(6), 4.0);
    }

    #[test]
    fn odd_and_even_sizes_interpolate_on_their_own_curves() {
        // Odd batches cost more than the next even one, as measured on 2 cores.
        let c = CostCurve {
            model_file: "m".into(),
            model_bytes: 1,
            threads: 1,
            context_tokens: 0,
            seconds: vec![(1, 1.0), (2, 1.2), (3, 2.0), (4, 1.8), (8, 3.0), (9, 3.8), (16, 5.0), (17, 6.0)],
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
}
