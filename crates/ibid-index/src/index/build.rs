//! `ibid build`: documents → tokens → shards (token file, offsets, metadata, suffix array) → an
//! index folder that appears atomically.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::format::{
    pointer_width, BuildParams, Manifest, Part, ShardFile, ShardManifest, Split, FORMAT_NAME, FORMAT_VERSION, LAYOUT, MANIFEST_FILE,
};
use super::sa::{self, MAX_SHARD_TOKENS};
use super::tokens::TokenBuf;
use super::write::{write_file, Staging};
use crate::corpus::{self, CorpusOptions, Document, DocumentStream};
use crate::error::{Error, IoContext, Result};
use crate::tokenize::{self, TokenWidth, Tokenizer, PIECE_TARGET_BYTES};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub output: PathBuf,
    /// Replace an index already at `output`.
    pub force: bool,
    pub corpus: CorpusOptions,
    /// Peak memory to plan shards for, in bytes.
    pub memory_budget: u64,
    /// An explicit cap on tokens per shard (below what the budget allows).
    pub max_shard_tokens: Option<u64>,
    /// Threads for the suffix-array stage (tokenizing uses rayon's pool).
    pub threads: usize,
    /// Build only this part of the index (`--shard i/N`); `ibid merge` joins the parts.
    pub part: Option<Part>,
}

impl BuildOptions {
    pub fn new(output: impl Into<PathBuf>) -> Self {
        BuildOptions {
            output: output.into(),
            force: false,
            corpus: CorpusOptions::default(),
            memory_budget: default_memory_budget(),
            max_shard_tokens: None,
            threads: rayon::current_num_threads(),
            part: None,
        }
    }
}

/// Half of the machine's memory, or 4 GiB where that cannot be read. Total rather than available
/// memory, so that the same input gives the same shards on the same machine whatever else runs.
pub fn default_memory_budget() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        info.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    available.map(|b| b / 2).unwrap_or(4 << 30)
}

/// Text read per tokenizing batch: big enough to keep every thread busy, small next to a shard.
const BATCH_BYTES: usize = 8 << 20;
/// Smallest budget we plan for.
const MIN_BUDGET: u64 = 64 << 20;

/// Tokens per shard that fit the memory budget: the token array at its width plus the 32-bit
/// suffix array, after setting aside room for one batch in flight.
pub fn shard_capacity(width: TokenWidth, memory_budget: u64, cap: Option<u64>) -> u64 {
    let batch_overhead = BATCH_BYTES as u64 * 10;
    let usable = memory_budget.max(MIN_BUDGET).saturating_sub(batch_overhead).max(MIN_BUDGET / 2);
    let per_token = width.bytes() as u64 + 4 + 2;
    let by_budget = usable / per_token;
    by_budget.min(cap.unwrap_or(u64::MAX)).clamp(1, MAX_SHARD_TOKENS)
}

/// Receives progress from a build; the CLI draws a bar with it.
pub trait BuildObserver: Sync {
    fn started(&self, _input_bytes: u64) {}
    fn progress(&self, _bytes_read: u64, _tokens: u64) {}
    fn stage(&self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl BuildObserver for Quiet {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildTimings {
    pub read_tokenize_s: f64,
    pub suffix_array_s: f64,
    pub write_s: f64,
    pub total_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildReport {
    pub output: PathBuf,
    pub manifest: Manifest,
    pub input_bytes: u64,
    pub text_bytes: u64,
    pub timings: BuildTimings,
}

/// One shard being filled.
struct ShardBuilder {
    tokens: TokenBuf,
    offsets: Vec<u64>,
    metadata: Vec<u8>,
    metaoff: Vec<u64>,
}

impl ShardBuilder {
    fn new(width: TokenWidth) -> Self {
        ShardBuilder { tokens: TokenBuf::new(width), offsets: Vec::new(), metadata: Vec::new(), metaoff: Vec::new() }
    }

    fn add(&mut self, ids: &[u32], doc: &Document) {
        let width = self.tokens.width();
        self.offsets.push((self.tokens.len() * width.bytes()) as u64);
        self.tokens.push(width.separator());
        self.tokens.extend(ids);
        self.metaoff.push(self.metadata.len() as u64);
        serde_json::to_writer(&mut self.metadata, &doc.metadata_json()).expect("JSON serializes");
        self.metadata.push(b'\n');
    }
}

struct Build<'a> {
    tokenizer: &'a dyn Tokenizer,
    options: &'a BuildOptions,
    observer: &'a dyn BuildObserver,
    staging: Staging,
    width: TokenWidth,
    capacity: u64,
    shard: ShardBuilder,
    shards: Vec<ShardManifest>,
    tokens_total: u64,
    text_bytes: u64,
    timings: BuildTimings,
}

impl Build<'_> {
    fn add_batch(&mut self, docs: &[Document]) -> Result<()> {
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        let tokenized = tokenize::tokenize_batch(self.tokenizer, &texts);
        let sep = self.width.separator();
        for (doc, ids) in docs.iter().zip(tokenized) {
            if let Some(bad) = ids.iter().find(|&&t| t >= sep) {
                return Err(Error::Tokenizer(format!("token id {bad} does not fit below the {}-byte separator", self.width.bytes())));
            }
            let needed = ids.len() as u64 + 1;
            if needed > MAX_SHARD_TOKENS {
                return Err(Error::Argument(format!("a document of {needed} tokens is too large for one shard")));
            }
            if !self.shard.tokens.is_empty() && self.shard.tokens.len() as u64 + needed > self.capacity {
                self.flush_shard()?;
            }
            self.tokens_total += needed;
            self.shard.add(&ids, doc);
        }
        Ok(())
    }

    fn flush_shard(&mut self) -> Result<()> {
        let shard = std::mem::replace(&mut self.shard, ShardBuilder::new(self.width));
        let id = self.shards.len();
        self.observer.stage(&format!("shard {id}: writing {} tokens", shard.tokens.len()));
        let dir = self.staging.path().to_path_buf();
        let t0 = Instant::now();
        let mut files = std::collections::BTreeMap::new();
        let n_tokens = shard.tokens.len() as u64;
        let n_docs = shard.offsets.len() as u64;
        let tokenized_bytes = n_tokens * self.width.bytes() as u64;
        let path = |f: ShardFile| dir.join(f.name(id));
        files.insert(ShardFile::Tokenized.name(id), write_file(&path(ShardFile::Tokenized), |w| shard.tokens.write_le(w))?);
        files.insert(ShardFile::Offset.name(id), write_file(&path(ShardFile::Offset), |w| write_u64s(w, &shard.offsets))?);
        files.insert(ShardFile::Metadata.name(id), write_file(&path(ShardFile::Metadata), |w| w.write_all(&shard.metadata))?);
        files.insert(ShardFile::Metaoff.name(id), write_file(&path(ShardFile::Metaoff), |w| write_u64s(w, &shard.metaoff))?);
        let write_s = t0.elapsed().as_secs_f64();

        self.observer.stage(&format!("shard {id}: suffix array of {n_tokens} tokens"));
        let t1 = Instant::now();
        let ShardBuilder { tokens, .. } = shard;
        let sa = sa::suffix_array(tokens, self.options.threads)?;
        self.timings.suffix_array_s += t1.elapsed().as_secs_f64();

        let t2 = Instant::now();
        let ptr_width = pointer_width(tokenized_bytes);
        let width_bytes = self.width.bytes();
        files.insert(ShardFile::Table.name(id), write_file(&path(ShardFile::Table), |w| sa::write_table(&sa, width_bytes, ptr_width, w))?);
        self.timings.write_s += write_s + t2.elapsed().as_secs_f64();
        self.shards.push(ShardManifest { id, documents: n_docs, tokens: n_tokens, pointer_width: ptr_width, files });
        Ok(())
    }
}

fn write_u64s(w: &mut impl std::io::Write, values: &[u64]) -> std::io::Result<()> {
    for chunk in values.chunks(1 << 13) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes)?;
    }
    Ok(())
}

/// Build an index from `inputs` (files, folders, `-` for stdin) into `options.output`.
pub fn build(inputs: &[PathBuf], tokenizer: &dyn Tokenizer, options: &BuildOptions, observer: &dyn BuildObserver) -> Result<BuildReport> {
    let start = Instant::now();
    if inputs.is_empty() {
        return Err(Error::Argument("no corpus given".into()));
    }
    let mut sources = corpus::discover(inputs)?;
    if let Some(part) = options.part.filter(|p| p.split == Split::Files) {
        if sources.iter().any(|s| matches!(s, corpus::Source::Stdin)) {
            return Err(Error::Argument("stdin cannot be split by file: use --split documents".into()));
        }
        sources = part.files(sources, |s| match s {
            corpus::Source::File(p, _) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            corpus::Source::Stdin => 0,
        });
    }
    let input_bytes = corpus::total_bytes(&sources);
    let staging = Staging::new(&options.output, options.force)?;
    let width = tokenizer.width();
    let capacity = shard_capacity(width, options.memory_budget, options.max_shard_tokens);
    observer.started(input_bytes);

    let mut stream = DocumentStream::new(sources, options.corpus.clone());
    let bytes_read = stream.bytes_read();
    let mut build = Build {
        tokenizer,
        options,
        observer,
        staging,
        width,
        capacity,
        shard: ShardBuilder::new(width),
        shards: Vec::new(),
        tokens_total: 0,
        text_bytes: 0,
        timings: BuildTimings::default(),
    };

    let mut batch: Vec<Document> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut tokenize_s = 0.0;
    // Documents with text, in reading order: a part split by document keeps its share of them.
    let mut number = 0u64;
    loop {
        let next = stream.next().transpose()?;
        let end = next.is_none();
        if let Some(doc) = next {
            if options.part.is_none_or(|p| p.takes_document(number)) {
                batch_bytes += doc.text.len();
                batch.push(doc);
            }
            number += 1;
        }
        if batch_bytes >= BATCH_BYTES || (end && !batch.is_empty()) {
            build.text_bytes += batch_bytes as u64;
            let t = Instant::now();
            let before = build.timings.suffix_array_s + build.timings.write_s;
            build.add_batch(&batch)?;
            let shard_work = build.timings.suffix_array_s + build.timings.write_s - before;
            tokenize_s += t.elapsed().as_secs_f64() - shard_work;
            batch.clear();
            batch_bytes = 0;
            observer.progress(bytes_read.load(Ordering::Relaxed), build.tokens_total);
        }
        if end {
            break;
        }
    }
    let stats = stream.stats.clone();
    if build.shard.tokens.is_empty() && build.shards.is_empty() {
        let mut inputs = inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        if let Some(p) = options.part {
            inputs += &format!("; part {}/{} split by {:?} has none of them", p.index, p.count, p.split).to_lowercase();
        }
        return Err(Error::EmptyCorpus { inputs });
    }
    if !build.shard.tokens.is_empty() {
        build.flush_shard()?;
    }
    build.timings.read_tokenize_s = tokenize_s;

    let manifest = Manifest {
        format: FORMAT_NAME.into(),
        format_version: FORMAT_VERSION,
        layout: LAYOUT.into(),
        token_width: width,
        tokenizer: tokenizer.identity().clone(),
        documents: build.shards.iter().map(|s| s.documents).sum(),
        tokens: build.tokens_total,
        shards: build.shards,
        build: BuildParams {
            ibid_version: env!("CARGO_PKG_VERSION").into(),
            inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
            corpus: options.corpus.clone(),
            memory_budget: options.memory_budget,
            max_shard_tokens: capacity,
            piece_bytes: PIECE_TARGET_BYTES,
            read: stats,
            part: options.part,
        },
    };
    let manifest_path = build.staging.path().join(MANIFEST_FILE);
    std::fs::write(&manifest_path, manifest.to_json()).at(&manifest_path)?;
    if let Ok(f) = std::fs::File::open(&manifest_path) {
        f.sync_all().at(&manifest_path)?;
    }
    observer.stage("moving the index into place");
    build.staging.commit()?;
    build.timings.total_s = start.elapsed().as_secs_f64();
    Ok(BuildReport { output: options.output.clone(), manifest, input_bytes, text_bytes: build.text_bytes, timings: build.timings })
}

/// Where `ibid build` puts an index when no `-o` is given: `index/<name of the first input>`.
pub fn default_output(inputs: &[PathBuf]) -> PathBuf {
    let name = inputs
        .first()
        .filter(|p| p.as_os_str() != "-")
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| n.split('.').next().unwrap_or("corpus").to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "stdin".into());
    Path::new("index").join(name)
}

/// What `table_for_tokenized` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableReport {
    pub shards: usize,
    pub tokens: u64,
    pub suffix_array_s: f64,
    pub total_s: f64,
}

/// Build `table.N` for every `tokenized.N` in `dir` that another tool wrote (infini-gram's
/// `make-part`/`merge`/`concat` stages, in one step). Each table is written beside its token file
/// under a temporary name and renamed, so a failure leaves no partial table.
pub fn table_for_tokenized(dir: &Path, width: TokenWidth, threads: usize, force: bool) -> Result<TableReport> {
    let start = Instant::now();
    let mut report = TableReport { shards: 0, tokens: 0, suffix_array_s: 0.0, total_s: 0.0 };
    for id in 0.. {
        let tok_path = dir.join(ShardFile::Tokenized.name(id));
        if !tok_path.exists() {
            break;
        }
        let table_path = dir.join(ShardFile::Table.name(id));
        if table_path.exists() && !force {
            return Err(Error::IndexExists(table_path));
        }
        let bytes = std::fs::read(&tok_path).at(&tok_path)?;
        let w = width.bytes();
        if bytes.is_empty() || bytes.len() % w != 0 {
            return Err(Error::corrupt(&tok_path, format!("size {} is not a positive multiple of {w}", bytes.len())));
        }
        let tokens = match width {
            TokenWidth::U8 => TokenBuf::U8(bytes),
            TokenWidth::U16 => TokenBuf::U16(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()),
            TokenWidth::U32 => TokenBuf::U32(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        };
        let n = tokens.len() as u64;
        let t = Instant::now();
        let sa = sa::suffix_array(tokens, threads)?;
        report.suffix_array_s += t.elapsed().as_secs_f64();
        let tmp = dir.join(format!(".{}.tmp", ShardFile::Table.name(id)));
        let ptr = pointer_width(n * w as u64);
        let written = write_file(&tmp, |out| sa::write_table(&sa, w, ptr, out));
        if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, &table_path).at(&table_path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        report.shards += 1;
        report.tokens += n;
    }
    if report.shards == 0 {
        return Err(Error::corrupt(dir, "no tokenized.0 here"));
    }
    report.total_s = start.elapsed().as_secs_f64();
    Ok(report)
}
