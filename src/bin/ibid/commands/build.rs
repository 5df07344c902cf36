//! `ibid build` and `ibid table`: corpus → tokens → suffix arrays.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ibid::corpus::{CorpusOptions, InputFormat};
use ibid::index::{self, BuildObserver, BuildOptions, Part, Split};
use ibid::tokenize::{TokenWidth, TokenizerSpec};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::args::{parse_size, print_json};

#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Documents,
    Files,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Auto,
    Text,
    Jsonl,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Corpus files or folders; `-` reads stdin.
    #[arg(required = true)]
    pub corpus: Vec<PathBuf>,
    /// Output folder (default: index/<name of the first input>).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// `bytes`, or `gguf:PATH` for the vocabulary of a GGUF model.
    #[arg(long, default_value = "bytes")]
    pub tokenizer: TokenizerSpec,
    /// How to read files: by extension (auto), each file one document (text), or JSONL.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// The JSONL field that holds the text; other fields become metadata.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Memory to plan shards for, e.g. 512M or 8G (default: half of the available memory).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// At most this many tokens per shard (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_tokens: Option<u64>,
    /// Replace an existing index at the output path.
    #[arg(long)]
    pub force: bool,
    /// Build part I of N (`0/4` … `3/4`): N runs with the same inputs and options, on one machine
    /// or many, build the parts of one index; `ibid merge` joins them.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// How --shard divides the inputs: documents round-robin (every part reads everything), or
    /// whole files balanced by size (every part reads only its files).
    #[arg(long, value_enum, default_value = "documents", requires = "shard")]
    pub split: SplitArg,
    /// Skip bad documents (invalid JSON or UTF-8, missing text field) and count them.
    #[arg(long)]
    pub skip_bad: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Draws the build progress bar on stderr.
pub struct Bar {
    pub bar: ProgressBar,
    pub start: Instant,
}

impl BuildObserver for Bar {
    fn started(&self, input_bytes: u64) {
        self.bar.set_length(input_bytes);
    }
    fn progress(&self, bytes_read: u64, tokens: u64) {
        self.bar.set_position(bytes_read);
        let rate = tokens as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!("{tokens} tokens, {:.0} tokens/s", rate));
    }
    fn stage(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }
}

pub fn run_build(args: BuildArgs, threads: usize) -> Result<()> {
    // Ctrl-C or a kill leaves no hidden staging folder behind
    index::remove_staging_on_signal()?;
    let tokenizer = args.tokenizer.load().context("cannot load the tokenizer")?;
    let output = args.output.clone().unwrap_or_else(|| index::default_output(&args.corpus));
    let mut options = BuildOptions::new(&output);
    options.force = args.force;
    options.corpus = CorpusOptions {
        format: match args.format {
            FormatArg::Auto => InputFormat::Auto,
            FormatArg::Text => InputFormat::Text,
            FormatArg::Jsonl => InputFormat::Jsonl,
        },
        text_field: args.text_field.clone(),
        skip_bad: args.skip_bad,
    };
    if let Some(m) = args.memory {
        options.memory_budget = m;
    }
    options.max_shard_tokens = args.shard_tokens;
    options.threads = threads;
    let split = match args.split {
        SplitArg::Documents => Split::Documents,
        SplitArg::Files => Split::Files,
    };
    options.part = args.shard.as_deref().map(|s| Part::parse(s, split)).transpose()?;
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} ETA {eta} {msg}")
            .expect("valid template"),
    );
    let observer = Bar { bar, start: Instant::now() };
    let report = index::build(&args.corpus, tokenizer.as_ref(), &options, &observer)
        .with_context(|| format!("building {} failed; nothing was written there", output.display()))?;
    observer.bar.finish_and_clear();
    let m = &report.manifest;
    print_json(&json!({
        "output": report.output,
        "documents": m.documents,
        "tokens": m.tokens,
        "shards": m.shards.len(),
        "part": m.build.part,
        "token_width": m.token_width,
        "tokenizer": m.tokenizer,
        "input_bytes": report.input_bytes,
        "text_bytes": report.text_bytes,
        "skipped": {"bad": m.build.read.skipped_bad, "empty": m.build.read.skipped_empty, "reasons": m.build.read.skip_reasons},
        "timings": report.timings,
        "tokens_per_s": m.tokens as f64 / report.timings.read_tokenize_s.max(1e-9),
    }))
}

/// One index from the parts of a sharded build (or from whole indexes of one tokenizer).
pub fn run_merge(parts: Vec<PathBuf>, output: PathBuf, force: bool, quiet: bool) -> Result<()> {
    index::remove_staging_on_signal()?;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    let observer = Bar { bar, start: Instant::now() };
    let report = index::merge(&parts, &output, force, &observer)
        .with_context(|| format!("merging into {} failed; nothing was written there", output.display()))?;
    observer.bar.finish_and_clear();
    print_json(&serde_json::to_value(report)?)
}

/// Suffix arrays for token files another tool wrote.
pub fn run_table(dir: PathBuf, token_width: TokenWidth, force: bool, threads: usize) -> Result<()> {
    let report = index::table_for_tokenized(&dir, token_width, threads, force)
        .with_context(|| format!("cannot build the suffix arrays in {}", dir.display()))?;
    print_json(&serde_json::to_value(report)?)
}
