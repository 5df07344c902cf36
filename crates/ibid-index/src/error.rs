//! Typed errors of the library. The binary adds context and prints them.

use std::io;
use std::path::{Path, PathBuf};

/// Every way a library call can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The io::Error is part of the message rather than a `#[source]`, so it is printed once.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },

    /// A corpus document that cannot be read as asked (bad JSON, missing field, invalid UTF-8, ...).
    #[error("{location}: {message}")]
    BadInput { location: String, message: String },

    #[error("the corpus has no documents with text (inputs: {inputs})")]
    EmptyCorpus { inputs: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("{path}: not a usable GGUF model: {reason}")]
    Model { path: PathBuf, reason: String },

    #[error("{0} already exists (pass --force to replace it)")]
    IndexExists(PathBuf),

    /// The index on disk does not match what its manifest or layout promises.
    #[error("{path}: corrupt index: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },

    #[error("{path}: checksum mismatch (manifest {expected}, file {actual})")]
    Checksum { path: PathBuf, expected: String, actual: String },

    #[error("tokenizer mismatch: the index was built with {index}, but {given} was given")]
    TokenizerMismatch { index: String, given: String },

    #[error("invalid query: {0}")]
    Query(String),

    /// A query given up before its answer (its deadline passed, or the server is stopping).
    #[error("{0}")]
    Stopped(String),

    #[error("suffix array construction failed: {0}")]
    SuffixArray(String),

    #[error("invalid argument: {0}")]
    Invalid(String),

    /// A side file (a saved recycling matrix, ...) that is truncated, corrupt or made for
    /// another model or index.
    #[error("{path}: unusable: {reason}")]
    Unusable { path: PathBuf, reason: String },

    /// llama.cpp refused a context or a batch.
    #[error("llama.cpp: {0}")]
    Llama(String),

    /// A generation has no room left in its context for another step.
    #[error("the context of {n_ctx} tokens is full after {generated} generated tokens")]
    ContextFull { n_ctx: usize, generated: usize },

    /// Something that should not happen did (a contained panic, a thread that would not start).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    pub fn corrupt(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::CorruptIndex { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
}

/// Write a file so that readers see the old contents or the new, never a part: a temporary file
/// in the same folder, synced, then renamed over the destination.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".ibid-tmp").tempfile_in(dir).at(dir)?;
    tmp.write_all(bytes).at(tmp.path())?;
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Attach a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
