//! The `ibid` command line: parse the arguments, then run one command (`commands/`, one file
//! each) over the library.

use clap::{Parser, Subcommand};
use ibid::query_engine::QueryType;
use ibid::tokenize::{TokenWidth, TokenizerSpec};
use std::path::PathBuf;

mod args;
mod commands;
mod render;

use args::{parse_size, parse_threads, parse_width, IndexArgs, ModelArgs};
use commands::build::BuildArgs;
use commands::generate::GenerateArgs;
use commands::query::QueryArgs;
use commands::serve::ServeArgs;

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
    /// Join the parts of a sharded build (`build --shard I/N`), or whole indexes of one
    /// tokenizer, into one index: shards renumbered, files hard-linked (or copied) and checked
    /// against their checksums, one manifest written.
    Merge {
        /// The parts' index folders (a sharded build's parts in any order).
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        /// Output folder.
        #[arg(short, long)]
        output: PathBuf,
        /// Replace an existing index at the output path.
        #[arg(long)]
        force: bool,
        /// No progress line.
        #[arg(short, long)]
        quiet: bool,
    },
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

fn main() {
    let cli = Cli::parse();
    // `gguf:PATH` tokenizers and indexes built with one load through llama.cpp.
    ibid::register_tokenizers();
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
        Command::Build(args) => commands::build::run_build(args, threads),
        Command::Merge { parts, output, force, quiet } => commands::build::run_merge(parts, output, force, quiet),
        Command::Info(args) => commands::index::run_info(args),
        Command::Verify { index, deep } => commands::index::run_verify(index, deep),
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
        Command::Query { index, tokenizer } => commands::query::run_batch(index, tokenizer),
        Command::Generate(args) => commands::generate::run_generate(args, threads),
        Command::Calibrate { model, sizes, reps, context } => commands::calibrate::run_calibrate(model, sizes, reps, context, threads),
        Command::Serve(args) => commands::serve::run_serve_model(args, threads),
        Command::ServeIndex { index, tokenizer, addr, max_body, timeout } => {
            commands::serve::run_serve(index, tokenizer, addr, max_body, timeout)
        }
        Command::Table { dir, token_width, force } => commands::build::run_table(dir, token_width, force, threads),
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
