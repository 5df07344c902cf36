//! `ibid serve` (generation over HTTP, with the query API when an index is given) and `ibid serve-index`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use ibid::index::Index;
use ibid::query_engine::QueryEngine;
use ibid::server::query_routes::QueryServerOptions;
use ibid::tokenize::TokenizerSpec;

use crate::args::{parse_size, IndexArgs, ModelArgs, TokenizerNeed};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A corpus index: drafts come from it, and its n-gram query API is served too.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Draft sources, a comma list of: context, ngram, index, recycle, default (context and ngram,
    /// the measured best), all, none.
    #[arg(long, value_delimiter = ',', default_value = "default")]
    pub draft: Vec<String>,
    /// Requests that may wait for the generator; more are answered 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Requests generated at once, their draft trees verified in one batch (each gets --ctx tokens).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub parallel: u32,
    /// Largest request body, e.g. 1M.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    pub max_body: u64,
    /// Per-request time limit in seconds, queueing included.
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Do not save the token-recycling matrix on shutdown.
    #[arg(long)]
    pub no_recycle_save: bool,
    /// The model name reported in answers (default: the model's file name).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run_serve_model(args: ServeArgs, threads: usize) -> Result<()> {
    let sources = ibid::draft::SourceSet::from_names(&args.draft).map_err(anyhow::Error::msg)?;
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
    let config = ibid::server::WorkerConfig {
        session,
        request_ctx: n_ctx,
        sources,
        save_recycle: !args.no_recycle_save,
        max_budget,
        queue: args.queue,
    };
    let (queue, worker) = ibid::server::spawn_worker(model.clone(), index.clone(), config, metrics.clone())?;
    let name =
        args.name.clone().unwrap_or_else(|| args.model.model.file_name().map_or("model".into(), |f| f.to_string_lossy().into_owned()));
    let options = ibid::server::ModelServerOptions {
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
        ibid::server::serve(app, listener, ibid::server::shutdown::raising(stopping, ibid::server::shutdown::shutdown_signal())).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // The app (and with it the queue) is gone: the worker finishes its job and saves.
    drop(runtime);
    let _ = worker.join();
    eprintln!("ibid: stopped");
    Ok(())
}

pub fn run_serve(
    index: IndexArgs,
    tokenizer: Option<TokenizerSpec>,
    addr: std::net::SocketAddr,
    max_body: u64,
    timeout: f64,
) -> Result<()> {
    let engine = std::sync::Arc::new(index.engine(tokenizer.as_ref(), TokenizerNeed::IfAvailable)?);
    let options = QueryServerOptions {
        addr,
        max_body_bytes: max_body as usize,
        timeout: std::time::Duration::from_secs_f64(timeout.max(0.001)),
        ..QueryServerOptions::default()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.addr).await.with_context(|| format!("cannot listen on {}", options.addr))?;
        eprintln!("ibid: serving {} on http://{}", index.index.display(), listener.local_addr()?);
        ibid::server::query_routes::serve(engine, listener, &options, ibid::server::shutdown::shutdown_signal()).await?;
        eprintln!("ibid: stopped");
        Ok(())
    })
}
