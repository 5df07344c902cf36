//! The `ibid` command line: a thin layer over the library.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

mod render;

use ibid::api::{QueryEngine, QueryIds, QueryRequest, QueryType};
use ibid::corpus::{CorpusOptions, InputFormat};
use ibid::generate::{generate, GenerateOptions};
use ibid::model::{Model, TextStream};
use ibid::serve::ServeOptions;
use ibid::verify::{SamplingParams, Session, SessionOptions};
use ibid::index::{self, BuildObserver, BuildOptions, Index, OpenOptions};
use ibid::tokenize::{TokenWidth, TokenizerSpec};

#[derive(Parser)]
#[command(name = "ibid", version, about = "Suffix-array corpus indexes, n-gram queries and lossless accelerated generation")]
struct Cli {
    /// Worker threads, 1 to 256 (default: all cores).
    #[arg(long, global = true, value_parser = parse_threads)]
    threads: Option<usize>,
    /// llama.cpp's batch-size-dependent CPU kernels: cheaper large verification batches, but
    /// accelerated output may differ from plain decoding where the model is near a tie. Without
    /// it, every row of a batch gets the logits it would get alone, bit for bit.
    #[arg(long, global = true)]
    fast_kernels: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an index from text, JSONL, .gz/.zst files, folders or stdin (`-`).
    Build(BuildArgs),
    /// Print an index's manifest and statistics.
    Info(IndexArgs),
    /// Check sizes, checksums and suffix-array pointers of an index.
    Verify {
        #[command(flatten)]
        index: IndexArgs,
        /// Also check that the suffix array is sorted (reads every suffix).
        #[arg(long)]
        deep: bool,
    },
    /// Build the suffix arrays (`table.N`) for token files another tool wrote (`tokenized.N`).
    Table {
        /// The folder with `tokenized.N` (and `offset.N`).
        dir: PathBuf,
        /// Token width in bytes: 1, 2 or 4.
        #[arg(long, value_parser = parse_width)]
        token_width: TokenWidth,
        /// Replace existing `table.N` files.
        #[arg(long)]
        force: bool,
    },
    /// Count an n-gram, or a CNF (`a AND b OR c`).
    Count(QueryArgs),
    /// P(last token | the tokens before it).
    Prob(QueryArgs),
    /// The distribution of the next token after the query.
    Ntd(QueryArgs),
    /// ∞-gram: the distribution (or with --prob the probability of the last token) after the
    /// longest suffix of the query that occurs.
    Infgram {
        #[command(flatten)]
        args: QueryArgs,
        /// The probability of the query's last token instead of the distribution.
        #[arg(long)]
        prob: bool,
    },
    /// Where an n-gram occurs: count and suffix-array ranges per shard.
    Find(QueryArgs),
    /// Documents containing the query (a random sample), or one document by number.
    Docs {
        #[command(flatten)]
        args: QueryArgs,
        /// Fetch document number N instead of searching.
        #[arg(long)]
        doc_ix: Option<u64>,
    },
    /// Count a CNF query: clauses joined by AND, terms by OR.
    Cnf(QueryArgs),
    /// Batch mode: JSONL requests on stdin (infini-gram's API shape), JSONL answers on stdout.
    Query {
        #[command(flatten)]
        index: IndexArgs,
        #[arg(long)]
        tokenizer: Option<TokenizerSpec>,
    },
    /// Generate text with a GGUF model (streamed to stdout).
    Generate(GenerateArgs),
    /// Measure what a batch of N tokens costs relative to one (cached per model and thread count).
    Calibrate {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_values_t = ibid::calibrate::DEFAULT_SIZES)]
        sizes: Vec<usize>,
        /// Timings per size (the median is kept).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Tokens in the cache while measuring.
        #[arg(long, default_value_t = 512)]
        context: usize,
    },
    /// Serve OpenAI-compatible generation (with drafting) and, with --index, the n-gram query API.
    Serve(ServeArgs),
    /// Serve the n-gram query API over HTTP.
    ServeIndex {
        #[command(flatten)]
        index: IndexArgs,
        #[arg(long)]
        tokenizer: Option<TokenizerSpec>,
        /// Address to listen on (loopback by default).
        #[arg(long, default_value = "127.0.0.1:5000")]
        addr: std::net::SocketAddr,
        /// Largest request body, e.g. 1M.
        #[arg(long, value_parser = parse_size, default_value = "1M")]
        max_body: u64,
        /// Per-request time limit in seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Auto,
    Text,
    Jsonl,
}

#[derive(Args)]
struct BuildArgs {
    /// Corpus files or folders; `-` reads stdin.
    #[arg(required = true)]
    corpus: Vec<PathBuf>,
    /// Output folder (default: index/<name of the first input>).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// `bytes`, or `gguf:PATH` for the vocabulary of a GGUF model.
    #[arg(long, default_value = "bytes")]
    tokenizer: TokenizerSpec,
    /// How to read files: by extension (auto), each file one document (text), or JSONL.
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatArg,
    /// The JSONL field that holds the text; other fields become metadata.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Memory to plan shards for, e.g. 512M or 8G (default: half of the available memory).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// At most this many tokens per shard (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    shard_tokens: Option<u64>,
    /// Replace an existing index at the output path.
    #[arg(long)]
    force: bool,
    /// Skip bad documents (invalid JSON or UTF-8, missing text field) and count them.
    #[arg(long)]
    skip_bad: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct IndexArgs {
    /// The index folder.
    index: PathBuf,
    /// Token width in bytes (1, 2 or 4) of an index without a manifest; guessed when absent.
    #[arg(long, value_parser = parse_width)]
    token_width: Option<TokenWidth>,
    /// The id next-token queries report for "end of document" (default: the tokenizer's EOS).
    #[arg(long)]
    eos: Option<u32>,
}

impl IndexArgs {
    fn open(&self) -> Result<Index> {
        Index::open_with(&self.index, &OpenOptions { token_width: self.token_width, eos_token_id: self.eos })
            .with_context(|| format!("cannot open index {}", self.index.display()))
    }

    /// The index with its tokenizer: the one given, else the manifest's when `want`ed (servers,
    /// text queries) or cheap (bytes). Only a `needed` tokenizer that fails to load is an error.
    fn engine(&self, tokenizer: Option<&TokenizerSpec>, want: bool, needed: bool) -> Result<QueryEngine> {
        let index = self.open()?;
        let cheap = index.manifest.as_ref().is_some_and(|m| m.tokenizer.kind == "bytes");
        let tok = if tokenizer.is_some() || want || needed || cheap {
            let loaded = index.tokenizer(tokenizer);
            match loaded {
                Ok(t) => Some(t),
                Err(e) if needed => return Err(e).context("text queries need the index's tokenizer"),
                Err(_) => None,
            }
        } else {
            None
        };
        Ok(QueryEngine::new(index, tok))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Json,
    Table,
}

#[derive(Args)]
struct QueryArgs {
    #[command(flatten)]
    index: IndexArgs,
    /// The query text (or token ids with --ids).
    #[arg(default_value = "")]
    query: String,
    /// The query is token ids: `1 2 3`, or a CNF as JSON (`[[[1,2],[3]],[[4]]]`).
    #[arg(long)]
    ids: bool,
    /// The tokenizer for text queries (default: the one in the manifest).
    #[arg(long)]
    tokenizer: Option<TokenizerSpec>,
    /// Occurrences inspected by next-token queries before sampling.
    #[arg(long)]
    max_support: Option<u64>,
    /// Documents to return.
    #[arg(long)]
    maxnum: Option<usize>,
    /// Tokens of each document to show.
    #[arg(long)]
    max_disp_len: Option<u64>,
    /// CNF: clauses with more occurrences are subsampled.
    #[arg(long)]
    max_clause_freq: Option<u64>,
    /// CNF: how far apart (in tokens) the clauses' matches may be.
    #[arg(long)]
    max_diff_tokens: Option<u64>,
    /// Seed for document sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Output: JSON (default) or a table for people.
    #[arg(long, value_enum, default_value = "json")]
    format: OutputFormat,
}

impl QueryArgs {
    fn request(&self, query_type: QueryType) -> Result<QueryRequest> {
        let mut req = QueryRequest::new(query_type);
        if self.ids {
            let text = self.query.trim();
            req.query_ids = Some(if text.starts_with('[') {
                serde_json::from_str(text).context("--ids takes ids like `1 2 3` or a JSON CNF")?
            } else {
                QueryIds::Ngram(
                    text.split_whitespace()
                        .map(|t| t.parse::<u32>().with_context(|| format!("not a token id: {t}")))
                        .collect::<Result<_>>()?,
                )
            });
        } else {
            req.query = Some(self.query.clone());
        }
        req.max_support = self.max_support;
        req.maxnum = self.maxnum;
        req.max_disp_len = self.max_disp_len;
        req.max_clause_freq = self.max_clause_freq;
        req.max_diff_tokens = self.max_diff_tokens;
        req.seed = self.seed;
        Ok(req)
    }

    fn run(&self, query_type: QueryType, tweak: impl FnOnce(&mut QueryRequest)) -> Result<()> {
        // fetching a document by number tokenizes nothing: its text is shown if the tokenizer
        // loads, its token ids either way
        let needed = !self.ids && !matches!(query_type, QueryType::GetDocByIx);
        let engine = self.index.engine(self.tokenizer.as_ref(), !self.ids, needed)?;
        let mut req = self.request(query_type)?;
        tweak(&mut req);
        let answer = engine.answer(&req)?;
        match self.format {
            OutputFormat::Json => print_json(&answer),
            OutputFormat::Table => {
                write!(std::io::stdout().lock(), "{}", render::table(&answer))?;
                Ok(())
            }
        }
    }
}

#[derive(Args)]
struct ModelArgs {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// Context size in tokens (128 to 1,048,576).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(128..=1 << 20))]
    ctx: u32,
    /// Most tokens per decode (prompt chunks; 1 + draft nodes), 2 to 8192 and at most --ctx.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=8192))]
    batch: u32,
}

impl ModelArgs {
    fn load(&self) -> Result<Model> {
        Model::load(&self.model).with_context(|| format!("cannot load the model {}", self.model.display()))
    }

    /// The session's options; a batch larger than the context is refused here, before llama.cpp
    /// sees it (it asserts).
    fn session_options(&self, threads: usize) -> Result<SessionOptions> {
        if self.batch > self.ctx {
            anyhow::bail!("--batch {} is larger than --ctx {}", self.batch, self.ctx);
        }
        let n_batch = self.batch.max(2);
        let max_sequences = SessionOptions::default().max_sequences.min(n_batch - 1);
        Ok(SessionOptions { threads, n_ctx: self.ctx, n_batch, max_sequences, ..SessionOptions::default() })
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A corpus index: drafts come from it, and its n-gram query API is served too.
    #[arg(long)]
    index: Option<PathBuf>,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Draft sources, a comma list of: context, ngram, index, recycle, default (context and ngram,
    /// the measured best), all, none.
    #[arg(long, value_delimiter = ',', default_value = "default")]
    draft: Vec<String>,
    /// Requests that may wait for the generator; more are answered 503.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Requests generated at once, their draft trees verified in one batch (each gets --ctx tokens).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    parallel: u32,
    /// Largest request body, e.g. 1M.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    max_body: u64,
    /// Per-request time limit in seconds, queueing included.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Do not save the token-recycling matrix on shutdown.
    #[arg(long)]
    no_recycle_save: bool,
    /// The model name reported in answers (default: the model's file name).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample from the most likely tokens that make up this much probability.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Seed for sampling (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// A corpus index to draft from (its tokenizer must match the model).
    #[arg(long)]
    index: Option<PathBuf>,
    /// Draft sources, a comma list of: context, ngram, index, recycle, default (context and ngram,
    /// the measured best; used when --draft is not given), all (every source that applies), none
    /// (plain decoding), oracle (needs --oracle).
    #[arg(long, value_delimiter = ',')]
    draft: Vec<String>,
    /// A `--report` file of an earlier greedy run of the same prompt: `--draft oracle` drafts its
    /// tokens, the ceiling on what drafting can gain.
    #[arg(long)]
    oracle: Option<PathBuf>,
    /// Do not save the token-recycling matrix after the run (it is saved next to the index, or in
    /// the cache folder without one, and loaded on the next run).
    #[arg(long)]
    no_recycle_save: bool,
    /// Write the statistics, the token ids and the text as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Most draft tokens verified per step; `auto` (the default) picks it each step from the cost
    /// curve (measured at first use, or by `ibid calibrate`) and the acceptance seen so far, up
    /// to 48.
    #[arg(long, default_value = "auto")]
    budget: String,
    /// Print tokens/s, prompt and decode time to stderr.
    #[arg(long)]
    stats: bool,
}

/// Threads: 1 to 256 (more would only be spawned to wait; ggml's threads busy-wait).
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("{s} is not a thread count from 1 to 256")),
    }
}

fn parse_width(s: &str) -> Result<TokenWidth, String> {
    let n: u8 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    TokenWidth::try_from(n)
}

/// Sizes like `512M`, `8G`, `1.5GiB` or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let value: f64 = num.trim().parse().map_err(|_| format!("not a size: {s}"))?;
    if !(value > 0.0) {
        return Err(format!("size must be positive: {s}"));
    }
    Ok((value * mult as f64) as u64)
}

/// Draws the build progress bar on stderr.
struct Bar {
    bar: ProgressBar,
    start: Instant,
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

fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn run_build(args: BuildArgs, threads: usize) -> Result<()> {
    // Ctrl-C or a kill leaves no hidden staging folder behind
    index::write::remove_staging_on_signal()?;
    let tokenizer = args.tokenizer.load().context("cannot load the tokenizer")?;
    let output = args.output.clone().unwrap_or_else(|| index::build::default_output(&args.corpus));
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
        "token_width": m.token_width,
        "tokenizer": m.tokenizer,
        "input_bytes": report.input_bytes,
        "text_bytes": report.text_bytes,
        "skipped": {"bad": m.build.read.skipped_bad, "empty": m.build.read.skipped_empty, "reasons": m.build.read.skip_reasons},
        "timings": report.timings,
        "tokens_per_s": m.tokens as f64 / report.timings.read_tokenize_s.max(1e-9),
    }))
}

fn run_info(args: IndexArgs) -> Result<()> {
    let index = args.open()?;
    let shards: Vec<_> = index
        .shards
        .iter()
        .map(|s| {
            json!({
                "id": s.id, "documents": s.documents(), "tokens": s.tokens(), "pointer_width": s.pointer_width,
                "bytes": s.tokenized.len() + s.table.len() + s.offsets.len()
                    + s.metadata.as_ref().map_or(0, |m| m.len()) + s.metaoff.as_ref().map_or(0, |m| m.len()),
            })
        })
        .collect();
    let bytes: u64 = shards.iter().map(|s| s["bytes"].as_u64().unwrap_or(0)).sum();
    print_json(&json!({
        "index": index.dir,
        "layout": if index.manifest.is_some() { "ibid (infini-gram v4 + ibid.json)" } else { "infini-gram v4 (no manifest)" },
        "token_width": index.width,
        "documents": index.documents(),
        "tokens": index.tokens(),
        "bytes": bytes,
        "bytes_per_token": bytes as f64 / index.tokens().max(1) as f64,
        "shards": shards,
        "manifest": index.manifest,
    }))
}

fn run_verify(args: IndexArgs, deep: bool) -> Result<()> {
    let index = args.open()?;
    let report = index.verify(deep).with_context(|| format!("index {} failed verification", args.index.display()))?;
    print_json(&json!({"ok": true, "report": report}))
}

/// Batch mode: one JSON request per line in, one JSON answer (or `{"error": ...}`) per line out.
fn run_batch(index: IndexArgs, tokenizer: Option<TokenizerSpec>) -> Result<()> {
    let engine = index.engine(tokenizer.as_ref(), true, false)?;
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // Lines as bytes: one line of invalid UTF-8 gets its own error answer, and the lines after it
    // are answered (reading lines as text stopped at the first bad one).
    for (n, line) in std::io::BufRead::split(stdin, b'\n').enumerate() {
        let line = line.context("reading stdin")?;
        let answer = match std::str::from_utf8(&line) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => engine.answer_json(text).unwrap_or_else(|e| json!({"error": e.to_string()})),
            Err(e) => json!({"error": format!("line {} is not valid UTF-8: {e}", n + 1)}),
        };
        serde_json::to_writer(&mut out, &answer)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

fn run_generate(args: GenerateArgs, threads: usize) -> Result<()> {
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
        ibid::server::DraftSources::none()
    } else {
        ibid::server::DraftSources::from_names(&chosen).map_err(|e| anyhow::anyhow!("{e} (or oracle)"))?
    };
    if sources.iter().any(|s| s == "index") && index.is_none() {
        anyhow::bail!("--draft index needs --index DIR");
    }
    let mut proposers = chosen.context_and_index_proposers(index.as_ref());
    let mut recycle_open_s = None;
    if chosen.recycle {
        let started = Instant::now();
        let (recycle, problem) = ibid::draft::RecycleDrafter::for_model(&model, index.as_ref(), !args.no_recycle_save);
        if let Some(e) = problem {
            eprintln!("ibid: warning: {e}; starting a new recycling matrix");
        }
        recycle_open_s = Some(started.elapsed().as_secs_f64());
        proposers.push(Box::new(recycle));
    }
    if oracle {
        let file = args.oracle.as_ref().context("--draft oracle needs --oracle REPORT")?;
        let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let report: serde_json::Value =
            serde_json::from_slice(&text).with_context(|| format!("{} is not a JSON report", file.display()))?;
        let reference: Vec<u32> = serde_json::from_value(report["token_ids"].clone())
            .with_context(|| format!("{} has no token_ids list", file.display()))?;
        proposers.push(Box::new(ibid::draft::OracleDrafter::new(prompt_tokens.len(), reference)));
    }
    let drafting = !proposers.is_empty();
    let mut drafter = ibid::draft::Combined::new(proposers);
    let auto = args.budget == "auto";
    let max_budget = if auto {
        ibid::draft::MAX_AUTO_BUDGET
    } else {
        args.budget.parse::<usize>().with_context(|| format!("--budget takes a number or auto, not {:?}", args.budget))?
    };
    let mut session = Session::new(&model, session_options)?;
    // The budget prices drafts with this machine's cost curve (measured now at first use) and
    // what the sources' estimates were worth in earlier runs.
    let mut calibrate_s = None;
    if auto && drafting {
        let (curve, seconds) = ibid::calibrate::for_session(&mut session, false)?;
        calibrate_s = Some(seconds);
        drafter.budget = Some(ibid::draft::Budget::new(Some(&curve), ibid::draft::MAX_AUTO_BUDGET));
        if let Err(e) = drafter.remember(ibid::calibrate::learnt_path(model.path()), model.path()) {
            eprintln!("ibid: warning: {e}; learning the sources' acceptance afresh");
        }
    }
    let tokens = prompt_tokens;
    let options = GenerateOptions { max_tokens: args.max_tokens, sampling, budget: max_budget, ..GenerateOptions::default() };
    let mut text = TextStream::default();
    let mut out = std::io::stdout().lock();
    let report = generate(&mut session, &tokens, &mut drafter, &options, |t| {
        let piece = text.push(&model, t);
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
        true
    })?;
    let tail = text.finish();
    let _ = writeln!(out, "{tail}");
    drop(out);
    if let Err(e) = drafter.finish() {
        eprintln!("ibid: warning: {e}");
    }
    if let Some(budget) = &drafter.budget {
        if let Err(e) = ibid::calibrate::keep_observed(model.path(), threads, budget.observed_extra()) {
            eprintln!("ibid: warning: {e}");
        }
    }
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
        "mean_budget": drafter.budgets.iter().sum::<usize>() as f64 / drafter.budgets.len().max(1) as f64,
        "budgets": budget_histogram(&drafter.budgets),
        "cost_scale": drafter.budget.as_ref().map(|b| (b.cost_scale() * 1000.0).round() / 1000.0),
        "sources": drafter.source_report(),
        "recycle_open_s": recycle_open_s,
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

/// How often each budget was chosen, as `{"budget": steps}`.
fn budget_histogram(budgets: &[usize]) -> serde_json::Value {
    let mut counts = std::collections::BTreeMap::new();
    for &b in budgets {
        *counts.entry(b).or_insert(0u64) += 1;
    }
    json!(counts.into_iter().map(|(b, n)| (b.to_string(), json!(n))).collect::<serde_json::Map<_, _>>())
}

fn run_calibrate(model: ModelArgs, sizes: Vec<usize>, reps: usize, context: usize, threads: usize) -> Result<()> {
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

fn run_serve_model(args: ServeArgs, threads: usize) -> Result<()> {
    use std::sync::Arc;
    let sources = ibid::server::DraftSources::from_names(&args.draft).map_err(anyhow::Error::msg)?;
    let mut session = args.model.session_options(threads)?;
    let model = Arc::new(args.model.load()?);
    let index = match &args.index {
        Some(dir) => {
            let index = Index::open(dir).with_context(|| format!("cannot open index {}", dir.display()))?;
            model.check_index(&index)?;
            Some(Arc::new(index))
        }
        None => None,
    };
    let recycle = sources.recycle.then(|| {
        let (r, problem) = ibid::draft::RecycleDrafter::for_model(&model, index.as_deref(), !args.no_recycle_save);
        if let Some(e) = problem {
            eprintln!("ibid: warning: {e}; starting a new recycling matrix");
        }
        r
    });
    // The query API gets its own memory maps of the same files (the page cache is shared).
    let engine = match &args.index {
        Some(dir) => {
            let tokenizer = ibid::tokenize::GgufTokenizer::load_with(&args.model.model, true)?;
            Some(Arc::new(QueryEngine::new(Index::open(dir)?, Some(Box::new(tokenizer)))))
        }
        None => None,
    };
    let metrics = Arc::new(ibid::server::Metrics::new());
    // One cache for all slots, each slot's trees on its own range of sequence ids (as many as a
    // tree may have paths), and finished requests kept as cached prompts on the ids left.
    let n_ctx = session.n_ctx as usize;
    let parallel = args.parallel;
    let max_budget = ibid::draft::MAX_AUTO_BUDGET;
    session.slots = parallel;
    session.max_sequences = (160 / parallel).min(32);
    session.cached_prompts = 32;
    session.n_ctx = session.n_ctx.saturating_mul(parallel);
    let sequences = parallel * session.max_sequences + session.cached_prompts;
    session.n_batch = session.n_batch.max(parallel * (1 + max_budget as u32)).max(sequences + 1);
    let config = ibid::server::WorkerConfig { session, request_ctx: n_ctx, sources, max_budget, queue: args.queue };
    let (queue, worker) = ibid::server::worker::spawn(model.clone(), index.clone(), recycle, config, metrics.clone())?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.model.model.file_name().map_or("model".into(), |f| f.to_string_lossy().into_owned())
    });
    let options = ibid::server::ServerOptions {
        max_body_bytes: args.max_body as usize,
        timeout: std::time::Duration::from_secs_f64(args.timeout.max(0.001)),
        ..Default::default()
    };
    let stopping = options.stopping.clone();
    let state = Arc::new(ibid::server::AppState { model, model_name: name, queue, metrics, n_ctx, timeout: options.timeout });
    let app = ibid::server::router(state, engine, &options);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
        eprintln!("ibid: serving {} on http://{}", args.model.model.display(), listener.local_addr()?);
        ibid::server::serve(app, listener, ibid::serve::raising(stopping, ibid::serve::shutdown_signal())).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // The app (and with it the queue) is gone: the worker finishes its job and saves.
    drop(runtime);
    let _ = worker.join();
    eprintln!("ibid: stopped");
    Ok(())
}

fn run_serve(index: IndexArgs, tokenizer: Option<TokenizerSpec>, addr: std::net::SocketAddr, max_body: u64, timeout: f64) -> Result<()> {
    let engine = std::sync::Arc::new(index.engine(tokenizer.as_ref(), true, false)?);
    let options = ServeOptions {
        addr,
        max_body_bytes: max_body as usize,
        timeout: std::time::Duration::from_secs_f64(timeout.max(0.001)),
        ..ServeOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.addr).await.with_context(|| format!("cannot listen on {}", options.addr))?;
        eprintln!("ibid: serving {} on http://{}", index.index.display(), listener.local_addr()?);
        ibid::serve::serve(engine, listener, &options, ibid::serve::shutdown_signal()).await?;
        eprintln!("ibid: stopped");
        Ok(())
    })
}

fn main() {
    let cli = Cli::parse();
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if matches!(cli.command, Command::Build(_) | Command::Table { .. }) && std::env::var_os("OMP_WAIT_POLICY").is_none() {
        // libsais's OpenMP threads spin while idle otherwise, which starves the other core.
        std::env::set_var("OMP_WAIT_POLICY", "passive");
    }
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    // Off unless IBID_LOG asks (e.g. IBID_LOG=ibid=debug for per-step timings); the server logs at info.
    let default_log = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("IBID_LOG").unwrap_or_else(|_| default_log.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    ibid::llama::set_kernels(if cli.fast_kernels { ibid::llama::Kernels::Fast } else { ibid::llama::Kernels::Exact });
    if !cli.fast_kernels && ibid::llama::repacked_build() && matches!(cli.command, Command::Generate(_) | Command::Serve(_)) {
        eprintln!("ibid: warning: llama.cpp was built with GGML_CPU_REPACK on, so batched logits depend on the batch size and accelerated output may differ from plain decoding at near-ties (README, Exactness)");
    }
    let result = match cli.command {
        Command::Build(args) => run_build(args, threads),
        Command::Info(args) => run_info(args),
        Command::Verify { index, deep } => run_verify(index, deep),
        Command::Count(args) | Command::Cnf(args) => args.run(QueryType::Count, |_| {}),
        Command::Prob(args) => args.run(QueryType::Prob, |_| {}),
        Command::Ntd(args) => args.run(QueryType::Ntd, |_| {}),
        Command::Infgram { args, prob } => args.run(if prob { QueryType::InfgramProb } else { QueryType::InfgramNtd }, |_| {}),
        Command::Find(args) => args.run(QueryType::Find, |_| {}),
        Command::Docs { args, doc_ix: Some(ix) } => args.run(QueryType::GetDocByIx, |r| {
            r.doc_ix = Some(ix);
            r.query = None;
            r.query_ids = None;
        }),
        Command::Docs { args, doc_ix: None } => args.run(QueryType::SearchDocs, |_| {}),
        Command::Query { index, tokenizer } => run_batch(index, tokenizer),
        Command::Generate(args) => run_generate(args, threads),
        Command::Calibrate { model, sizes, reps, context } => run_calibrate(model, sizes, reps, context, threads),
        Command::Serve(args) => run_serve_model(args, threads),
        Command::ServeIndex { index, tokenizer, addr, max_body, timeout } => run_serve(index, tokenizer, addr, max_body, timeout),
        Command::Table { dir, token_width, force } => index::build::table_for_tokenized(&dir, token_width, threads, force)
            .with_context(|| format!("cannot build the suffix arrays in {}", dir.display()))
            .and_then(|r| print_json(&serde_json::to_value(r)?)),
    };
    if let Err(e) = result {
        if is_broken_pipe(&e) {
            // the reader left (`ibid info … | head`): not an error, as for any Unix filter
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Whether writing to stdout failed because its reader closed the pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = match (cause.downcast_ref::<std::io::Error>(), cause.downcast_ref::<serde_json::Error>()) {
            (Some(io), _) => Some(io.kind()),
            (None, Some(json)) => json.io_error_kind(),
            _ => None,
        };
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}
