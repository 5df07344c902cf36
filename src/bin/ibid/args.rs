//! Arguments several commands share (an index, a model), their parsers, and JSON output.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ibid::index::{Index, OpenOptions};
use ibid::model::Model;
use ibid::query_engine::QueryEngine;
use ibid::tokenize::{TokenWidth, TokenizerSpec};
use ibid::verify::SessionOptions;

/// How much a command needs the index's own tokenizer (a GGUF one takes a while to load).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TokenizerNeed {
    /// Token-id queries: loaded only when cheap (bytes) or given.
    No,
    /// Loaded when it can be (servers, documents shown as text); without it, ids only.
    IfAvailable,
    /// Text queries: a tokenizer that does not load is an error.
    Required,
}

#[derive(Args)]
pub struct IndexArgs {
    /// The index folder.
    pub index: PathBuf,
    /// Token width in bytes (1, 2 or 4) of an index without a manifest; guessed when absent.
    #[arg(long, value_parser = parse_width)]
    pub token_width: Option<TokenWidth>,
    /// The id next-token queries report for "end of document" (default: the tokenizer's EOS).
    #[arg(long)]
    pub eos: Option<u32>,
}

impl IndexArgs {
    pub fn open(&self) -> Result<Index> {
        Index::open_with(&self.index, &OpenOptions { token_width: self.token_width, eos_token_id: self.eos })
            .with_context(|| format!("cannot open index {}", self.index.display()))
    }

    /// The index with its tokenizer: the one given, else the manifest's as `need` says. Only a
    /// `Required` tokenizer that fails to load is an error.
    pub fn engine(&self, tokenizer: Option<&TokenizerSpec>, need: TokenizerNeed) -> Result<QueryEngine> {
        let index = self.open()?;
        let cheap = index.manifest.as_ref().is_some_and(|m| m.tokenizer.kind == "bytes");
        let tok = if tokenizer.is_some() || need != TokenizerNeed::No || cheap {
            match index.tokenizer(tokenizer) {
                Ok(t) => Some(t),
                Err(e) if need == TokenizerNeed::Required => return Err(e).context("text queries need the index's tokenizer"),
                Err(_) => None,
            }
        } else {
            None
        };
        Ok(QueryEngine::new(index, tok))
    }
}

#[derive(Args)]
pub struct ModelArgs {
    /// The GGUF model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Context size in tokens (128 to 1,048,576).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(128..=1 << 20))]
    pub ctx: u32,
    /// Most tokens per decode (prompt chunks; 1 + draft nodes), 2 to 8192 and at most --ctx.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(2..=8192))]
    pub batch: u32,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Model> {
        Model::load(&self.model).with_context(|| format!("cannot load the model {}", self.model.display()))
    }

    /// The session's options; a batch larger than the context is refused here, before llama.cpp
    /// sees it (it asserts).
    pub fn session_options(&self, threads: usize) -> Result<SessionOptions> {
        if self.batch > self.ctx {
            anyhow::bail!("--batch {} is larger than --ctx {}", self.batch, self.ctx);
        }
        let n_batch = self.batch.max(2);
        let max_sequences = SessionOptions::default().max_sequences.min(n_batch - 1);
        Ok(SessionOptions { threads, n_ctx: self.ctx, n_batch, max_sequences, ..SessionOptions::default() })
    }
}

/// Threads: 1 to 256 (more would only be spawned to wait; ggml's threads busy-wait).
pub fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("{s} is not a thread count from 1 to 256")),
    }
}

pub fn parse_width(s: &str) -> Result<TokenWidth, String> {
    let n: u8 = s.parse().map_err(|_| format!("not a number: {s}"))?;
    TokenWidth::try_from(n)
}

/// Sizes like `512M`, `8G`, `1.5GiB` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
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

pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
