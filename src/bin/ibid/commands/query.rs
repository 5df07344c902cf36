//! The query commands (`count`, `prob`, `ntd`, `infgram`, `find`, `docs`, `cnf`) and `ibid query`, the JSONL batch mode.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ibid::query_engine::{QueryIds, QueryRequest, QueryType};
use ibid::tokenize::TokenizerSpec;
use serde_json::json;

use crate::args::{print_json, IndexArgs, TokenizerNeed};
use crate::render;

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Json,
    Table,
}

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub index: IndexArgs,
    /// The query text (or token ids with --ids).
    #[arg(default_value = "")]
    pub query: String,
    /// The query is token ids: `1 2 3`, or a CNF as JSON (`[[[1,2],[3]],[[4]]]`).
    #[arg(long)]
    pub ids: bool,
    /// The tokenizer for text queries (default: the one in the manifest).
    #[arg(long)]
    pub tokenizer: Option<TokenizerSpec>,
    /// Occurrences inspected by next-token queries before sampling.
    #[arg(long)]
    pub max_support: Option<u64>,
    /// Documents to return.
    #[arg(long)]
    pub maxnum: Option<usize>,
    /// Tokens of each document to show.
    #[arg(long)]
    pub max_disp_len: Option<u64>,
    /// CNF: clauses with more occurrences are subsampled.
    #[arg(long)]
    pub max_clause_freq: Option<u64>,
    /// CNF: how far apart (in tokens) the clauses' matches may be.
    #[arg(long)]
    pub max_diff_tokens: Option<u64>,
    /// Seed for document sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output: JSON (default) or a table for people.
    #[arg(long, value_enum, default_value = "json")]
    pub format: OutputFormat,
}

impl QueryArgs {
    pub fn request(&self, query_type: QueryType) -> Result<QueryRequest> {
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

    pub fn run(&self, query_type: QueryType, tweak: impl FnOnce(&mut QueryRequest)) -> Result<()> {
        // fetching a document by number tokenizes nothing: its text is shown if the tokenizer
        // loads, its token ids either way
        let needed = !self.ids && !matches!(query_type, QueryType::GetDocByIx);
        let need = match (needed, self.ids) {
            (true, _) => TokenizerNeed::Required,
            (false, false) => TokenizerNeed::IfAvailable,
            (false, true) => TokenizerNeed::No,
        };
        let engine = self.index.engine(self.tokenizer.as_ref(), need)?;
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

/// Batch mode: one JSON request per line in, one JSON answer (or `{"error": ...}`) per line out.
pub fn run_batch(index: IndexArgs, tokenizer: Option<TokenizerSpec>) -> Result<()> {
    let engine = index.engine(tokenizer.as_ref(), TokenizerNeed::IfAvailable)?;
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
