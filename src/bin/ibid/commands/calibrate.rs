//! `ibid calibrate`: what a batch of N rows costs relative to one, on this machine.

use std::io::Write;

use anyhow::Result;
use ibid::verify::Session;

use crate::args::ModelArgs;

pub fn run_calibrate(model: ModelArgs, sizes: Vec<usize>, reps: usize, context: usize, threads: usize) -> Result<()> {
    let max = sizes.iter().copied().max().unwrap_or(1);
    if max > 8191 || context > 1 << 20 || !(1..=1000).contains(&reps) {
        anyhow::bail!("--sizes go up to 8191, --context up to 1048576, --reps from 1 to 1000");
    }
    let max = max as u32;
    let loaded = model.load()?;
    let mut options = model.session_options(threads)?;
    options.n_batch = options.n_batch.max(max + 1);
    options.n_ctx = options.n_ctx.max(context as u32 + max + 8);
    let mut session = Session::new(&loaded, options)?;
    let curve = ibid::calibrate::measure(&mut session, &sizes, context, reps)?;
    let path = ibid::calibrate::save(&curve, &model.model)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "| N | ms | relative to N=1 |\n|---:|---:|---:|")?;
    for &(n, s) in &curve.seconds {
        writeln!(out, "| {n} | {:.2} | {:.2} |", s * 1e3, curve.relative(n))?;
    }
    eprintln!("ibid: saved to {}", path.display());
    Ok(())
}
