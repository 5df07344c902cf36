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
    pub fn relative(&self, n: usize) -> f64 {
        let base = self.seconds.first().map_or(1.0, |p| p.1).max(1e-12);
        let pts = &self.seconds;
        if pts.is_empty() {
            return n as f64;
        }
        let at = pts.partition_point(|p| p.0 < n);
        let secs = if at == 0 {
            pts[0].1
        } else if at == pts.len() {
            // beyond the last point: extend the slope of the last two
            let (a, b) = (pts[pts.len().saturating_sub(2)], pts[pts.len() - 1]);
            let slope = if b.0 > a.0 { (b.1 - a.1) / (b.0 - a.0) as f64 } else { 0.0 };
            b.1 + slope * (n - b.0) as f64
        } else {
            let (a, b) = (pts[at - 1], pts[at]);
            if b.0 == n {
                b.1
            } else {
                a.1 + (b.1 - a.1) * (n - a.0) as f64 / (b.0 - a.0) as f64
            }
        };
        secs / base
    }
}

/// Batch sizes measured by default.
pub const DEFAULT_SIZES: [usize; 16] = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64];

/// Measure the curve on a session: `context_tokens` in the cache, `reps` timings per size (median).
pub fn measure(session: &mut Session<'_>, sizes: &[usize], context_tokens: usize, reps: usize) -> Result<CostCurve> {
    let max = sizes.iter().copied().max().unwrap_or(1);
    if max + 1 > session.options().n_batch as usize {
        return Err(Error::Invalid(format!("batches of {max} need --batch of at least {}", max + 1)));
    }
    // A real-looking context: the model's own tokens 100..100+context_tokens.
    let prompt: Vec<u32> = (0..context_tokens.max(1) as u32).map(|i| 100 + i % 5000).collect();
    session.prefill(&prompt)?;
    session.time_batch(1)?; // warm up
    let mut seconds = Vec::new();
    for &n in sizes {
        let mut t: Vec<f64> = (0..reps.max(1)).map(|_| session.time_batch(n)).collect::<Result<_>>()?;
        t.sort_by(f64::total_cmp);
        seconds.push((n, t[t.len() / 2]));
    }
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
}
