//! `ibid generate`: one prompt through the engine, streamed to stdout, with `--stats` and `--report`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ibid::engine::{generate_with, Engine, GenerateOptions, Sizing};
use ibid::index::Index;
use ibid::model::TextStream;
use ibid::verify::{SamplingParams, Session};
use serde_json::json;

use crate::args::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample from the most likely tokens that make up this much probability.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Seed for sampling (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A corpus index to draft from (its tokenizer must match the model).
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Draft sources, a comma list of: context, ngram, index, recycle, default (context and ngram,
    /// the measured best; used when --draft is not given), all (every source that applies), none
    /// (plain decoding), oracle (needs --oracle).
    #[arg(long, value_delimiter = ',')]
    pub draft: Vec<String>,
    /// A `--report` file of an earlier greedy run of the same prompt: `--draft oracle` drafts its
    /// tokens, the ceiling on what drafting can gain.
    #[arg(long)]
    pub oracle: Option<PathBuf>,
    /// Do not save the token-recycling matrix after the run (it is saved next to the index, or in
    /// the cache folder without one, and loaded on the next run).
    #[arg(long)]
    pub no_recycle_save: bool,
    /// Write the statistics, the token ids and the text as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Most draft tokens verified per step; `auto` (the default) picks it each step from the cost
    /// curve (measured at first use, or by `ibid calibrate`) and the acceptance seen so far, up
    /// to 48.
    #[arg(long, default_value = "auto")]
    pub budget: String,
    /// Print tokens/s, prompt and decode time to stderr.
    #[arg(long)]
    pub stats: bool,
}

pub fn run_generate(args: GenerateArgs, threads: usize) -> Result<()> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("cannot read the prompt file {}", f.display()))?,
        (None, None) => anyhow::bail!("give --prompt TEXT or --prompt-file FILE"),
    };
    if prompt.is_empty() {
        anyhow::bail!("the prompt is empty");
    }
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed.unwrap_or_else(rand::random),
    };
    sampling.validate()?;
    let session_options = args.model.session_options(threads)?;
    let model = args.model.load()?;
    let index = match &args.index {
        Some(dir) => {
            let index = Index::open(dir).with_context(|| format!("cannot open index {}", dir.display()))?;
            model.check_index(&index)?;
            Some(index)
        }
        None => None,
    };
    let sources: Vec<String> = if args.draft.is_empty() { vec!["default".into()] } else { args.draft.clone() };
    let prompt_tokens = model.tokenize_prompt(&prompt);
    let oracle = sources.iter().any(|s| s == "oracle");
    let chosen: Vec<&String> = sources.iter().filter(|s| *s != "oracle").collect();
    // `--draft oracle` alone drafts from the oracle only
    let chosen = if chosen.is_empty() {
        ibid::draft::SourceSet::none()
    } else {
        ibid::draft::SourceSet::from_names(&chosen).map_err(|e| anyhow::anyhow!("{e} (or oracle)"))?
    };
    if sources.iter().any(|s| s == "index") && index.is_none() {
        anyhow::bail!("--draft index needs --index DIR");
    }
    let mut opened = chosen.open(&model, index.as_ref(), !args.no_recycle_save);
    for w in &opened.warnings {
        eprintln!("ibid: warning: {w}");
    }
    if oracle {
        let file = args.oracle.as_ref().context("--draft oracle needs --oracle REPORT")?;
        let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let report: serde_json::Value =
            serde_json::from_slice(&text).with_context(|| format!("{} is not a JSON report", file.display()))?;
        let reference: Vec<u32> =
            serde_json::from_value(report["token_ids"].clone()).with_context(|| format!("{} has no token_ids list", file.display()))?;
        opened.sources.push(Box::new(ibid::draft::OracleSource::new(prompt_tokens.len(), reference)));
    }
    let (sizing, max_budget) = Sizing::from_arg(&args.budget)?;
    let mut session = Session::new(&model, session_options)?;
    // The budget prices drafts with this machine's cost curve (measured now at first use) and
    // what the sources' estimates were worth in earlier runs.
    let (mut engine, calibrate_s, problems) = Engine::with_sources(&mut session, opened.sources, sizing)?;
    for p in problems {
        eprintln!("ibid: warning: {p}");
    }
    let tokens = prompt_tokens;
    let options = GenerateOptions { max_tokens: args.max_tokens, sampling, budget: max_budget, ..GenerateOptions::default() };
    let mut text = TextStream::default();
    let mut out = std::io::stdout().lock();
    let report = generate_with(&mut engine, &tokens, &options, |t| {
        let piece = text.push(&model, t);
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
        true
    })?;
    let tail = text.finish();
    let _ = writeln!(out, "{tail}");
    drop(out);
    for p in engine.finish() {
        eprintln!("ibid: warning: {p}");
    }
    let budgets = engine.budgets();
    let drafter = engine.drafter();
    let mut stats = json!({
        "prompt_tokens": report.prompt_tokens,
        "tokens": report.tokens.len(),
        "prompt_s": report.prompt_s,
        "decode_s": report.decode_s,
        "tokens_per_s": report.tokens_per_s(),
        "steps": report.steps,
        "tokens_per_step": report.tokens_per_step(),
        "drafted": report.drafted,
        "accepted": report.accepted,
        "mean_budget": budgets.iter().map(|(&b, &n)| b as f64 * n as f64).sum::<f64>() / budgets.values().sum::<u64>().max(1) as f64,
        "budgets": json!(budgets.iter().map(|(b, n)| (b.to_string(), json!(n))).collect::<serde_json::Map<_, _>>()),
        "cost_scale": engine.budget().map(|b| (b.cost_scale() * 1000.0).round() / 1000.0),
        "sources": drafter.source_report(),
        "recycle_open_s": opened.recycle_open_s,
        "calibrate_s": calibrate_s,
        "stop": report.stop,
        "threads": threads,
        "kernels": ibid::llama::kernels().tag(),
    });
    if args.stats {
        eprintln!("{stats}");
    }
    if let Some(path) = &args.report {
        stats["token_ids"] = json!(report.tokens);
        stats["margins"] = json!(report.margins);
        stats["text"] = json!(String::from_utf8_lossy(&report.tokens.iter().flat_map(|&t| model.token_bytes(t)).collect::<Vec<u8>>()));
        ibid::error::write_atomic(path, &serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    Ok(())
}
