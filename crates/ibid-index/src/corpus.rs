//! Corpus readers: turn files, folders and stdin into a stream of documents.
//!
//! A plain-text file is one document. A JSONL file holds one document per line: the text comes from
//! one field, the other fields are kept as the document's metadata. `.zst` and `.gz` wrap either.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

/// How to read each input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// JSONL for `.jsonl`/`.ndjson`/`.json` (before any compression suffix), plain text otherwise.
    #[default]
    Auto,
    Text,
    Jsonl,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusOptions {
    pub format: InputFormat,
    /// The JSONL field that holds the document text.
    pub text_field: String,
    /// Count and skip bad documents instead of failing.
    pub skip_bad: bool,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions { format: InputFormat::Auto, text_field: "text".into(), skip_bad: false }
    }
}

/// One document: its text, where it came from, and its other JSONL fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub text: String,
    /// The source file (relative to a folder given as input), `<stdin>` for stdin.
    pub path: Arc<str>,
    /// 0-based line of a JSONL document; 0 for a whole file.
    pub linenum: u64,
    /// The JSONL fields other than the text field.
    pub metadata: Map<String, Value>,
}

impl Document {
    /// The metadata line infini-gram writes: `{"path", "linenum", "metadata"}`.
    pub fn metadata_json(&self) -> Value {
        serde_json::json!({"path": &*self.path, "linenum": self.linenum, "metadata": self.metadata})
    }
}

/// One input: a file or standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file and the name it is recorded under.
    File(PathBuf, String),
    Stdin,
}

impl Source {
    pub fn display(&self) -> String {
        match self {
            Source::File(_, name) => name.clone(),
            Source::Stdin => "<stdin>".into(),
        }
    }
}

/// Expand the inputs into sources: `-` is stdin, folders are walked recursively in name order
/// (hidden entries skipped), files are taken as given.
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    for input in inputs {
        if input.as_os_str() == "-" {
            sources.push(Source::Stdin);
            continue;
        }
        let meta = std::fs::metadata(input).at(input)?;
        if meta.is_dir() {
            let walker = walkdir::WalkDir::new(input)
                .follow_links(true)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
            for entry in walker {
                let entry = entry.map_err(|e| {
                    let path = e.path().unwrap_or(input).to_path_buf();
                    Error::io(path, e.into())
                })?;
                if entry.file_type().is_file() {
                    let name = entry.path().strip_prefix(input).unwrap_or(entry.path()).display().to_string();
                    sources.push(Source::File(entry.into_path(), name));
                }
            }
        } else {
            sources.push(Source::File(input.clone(), input.display().to_string()));
        }
    }
    Ok(sources)
}

/// Sum of the on-disk sizes of the file sources (stdin counts 0).
pub fn total_bytes(sources: &[Source]) -> u64 {
    sources
        .iter()
        .filter_map(|s| match s {
            Source::File(p, _) => std::fs::metadata(p).ok().map(|m| m.len()),
            Source::Stdin => None,
        })
        .sum()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn split_compression(path: &Path) -> (Compression, String) {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if let Some(stem) = name.strip_suffix(".zst") {
        (Compression::Zstd, stem.to_string())
    } else if let Some(stem) = name.strip_suffix(".gz") {
        (Compression::Gzip, stem.to_string())
    } else {
        (Compression::None, name)
    }
}

fn is_jsonl_name(name: &str) -> bool {
    name.ends_with(".jsonl") || name.ends_with(".ndjson") || name.ends_with(".json")
}

/// Counts raw bytes read from a file, before decompression, for progress reporting.
struct CountingReader<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What reading skipped, for the build report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadStats {
    pub documents: u64,
    pub skipped_bad: u64,
    pub skipped_empty: u64,
    /// The first few reasons for skipped documents.
    pub skip_reasons: Vec<String>,
}

pub(crate) const MAX_SKIP_REASONS: usize = 20;

struct OpenSource {
    name: String,
    path: Arc<str>,
    reader: Box<dyn BufRead + Send>,
    jsonl: bool,
    line: u64,
}

/// A stream of documents over all sources, in order.
pub struct DocumentStream {
    sources: std::vec::IntoIter<Source>,
    current: Option<OpenSource>,
    options: CorpusOptions,
    bytes_read: Arc<AtomicU64>,
    pub stats: ReadStats,
}

impl DocumentStream {
    pub fn new(sources: Vec<Source>, options: CorpusOptions) -> Self {
        DocumentStream {
            sources: sources.into_iter(),
            current: None,
            options,
            bytes_read: Arc::new(AtomicU64::new(0)),
            stats: ReadStats::default(),
        }
    }

    /// A shared counter of raw input bytes consumed so far.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    fn open(&self, source: &Source) -> Result<OpenSource> {
        let (raw, compression, inner_name, name): (Box<dyn Read + Send>, _, _, _) = match source {
            Source::Stdin => (Box::new(io::stdin()), Compression::None, String::new(), source.display()),
            Source::File(path, _) => {
                let file = File::open(path).at(path)?;
                let (compression, inner) = split_compression(path);
                (Box::new(file), compression, inner, source.display())
            }
        };
        let counted = CountingReader { inner: raw, counter: self.bytes_read.clone() };
        let decoded: Box<dyn Read + Send> = match compression {
            Compression::None => Box::new(counted),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counted)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(counted).at(&name)?),
        };
        let jsonl = match self.options.format {
            InputFormat::Jsonl => true,
            InputFormat::Text => false,
            InputFormat::Auto => is_jsonl_name(&inner_name),
        };
        Ok(OpenSource {
            path: Arc::from(name.as_str()),
            name,
            reader: Box::new(BufReader::with_capacity(1 << 20, decoded)),
            jsonl,
            line: 0,
        })
    }

    /// Record a bad document: an error, or a counted skip with `--skip-bad`.
    fn bad(&mut self, location: String, message: String) -> Result<()> {
        if !self.options.skip_bad {
            return Err(Error::BadInput { location, message });
        }
        self.stats.skipped_bad += 1;
        if self.stats.skip_reasons.len() < MAX_SKIP_REASONS {
            self.stats.skip_reasons.push(format!("{location}: {message}"));
        }
        Ok(())
    }

    /// The next document of the current source, `Ok(None)` when it is exhausted.
    fn next_in_current(&mut self) -> Result<Option<Document>> {
        loop {
            let Some(src) = self.current.as_mut() else {
                return Ok(None);
            };
            if !src.jsonl {
                let (name, path) = (src.name.clone(), src.path.clone());
                let mut bytes = Vec::new();
                src.reader.read_to_end(&mut bytes).at(&name)?;
                self.current = None;
                match String::from_utf8(bytes) {
                    Ok(text) => {
                        return Ok(Some(Document { text, path, linenum: 0, metadata: Map::new() }));
                    }
                    Err(e) => {
                        let at = e.utf8_error().valid_up_to();
                        self.bad(name, format!("invalid UTF-8 at byte {at}"))?;
                        return Ok(None);
                    }
                }
            }
            let mut line = Vec::new();
            let n = src.reader.read_until(b'\n', &mut line).at(&src.name)?;
            if n == 0 {
                self.current = None;
                return Ok(None);
            }
            src.line += 1;
            let location = format!("{}:{}", src.name, src.line);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            match parse_jsonl_line(&line, &self.options.text_field) {
                Ok((text, metadata)) => return Ok(Some(Document { text, path: src.path.clone(), linenum: src.line - 1, metadata })),
                Err(message) => self.bad(location, message)?,
            }
        }
    }
}

/// The text and the remaining fields of one JSONL line.
fn parse_jsonl_line(line: &[u8], text_field: &str) -> std::result::Result<(String, Map<String, Value>), String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut metadata) = value else {
        return Err("expected a JSON object".into());
    };
    match metadata.remove(text_field) {
        Some(Value::String(text)) => Ok((text, metadata)),
        Some(other) => Err(format!("field {text_field:?} is not a string but {}", json_kind(&other))),
        None => Err(format!("no field {text_field:?}")),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Iterator for DocumentStream {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let source = self.sources.next()?;
                match self.open(&source) {
                    Ok(open) => self.current = Some(open),
                    Err(e) => return Some(Err(e)),
                }
            }
            match self.next_in_current() {
                Ok(Some(doc)) if doc.text.is_empty() => self.stats.skipped_empty += 1,
                Ok(Some(doc)) => {
                    self.stats.documents += 1;
                    return Some(Ok(doc));
                }
                Ok(None) => self.current = None,
                Err(e) => {
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_keeps_other_fields_as_metadata() {
        let (text, metadata) = parse_jsonl_line(br#"{"text":"hi","id":3}"#, "text").unwrap();
        assert_eq!(text, "hi");
        assert_eq!(metadata.get("id"), Some(&Value::from(3)));
        assert!(metadata.get("text").is_none());
    }

    #[test]
    fn jsonl_errors_say_what_is_wrong() {
        assert!(parse_jsonl_line(b"{oops", "text").unwrap_err().contains("not valid JSON"));
        assert!(parse_jsonl_line(br#"{"t":"x"}"#, "text").unwrap_err().contains("no field"));
        assert!(parse_jsonl_line(br#"{"text":1}"#, "text").unwrap_err().contains("a number"));
        assert!(parse_jsonl_line(br#"[1]"#, "text").unwrap_err().contains("object"));
    }

    #[test]
    fn compression_suffixes() {
        assert_eq!(split_compression(Path::new("a/B.JSONL.ZST")).0, Compression::Zstd);
        assert_eq!(split_compression(Path::new("a.txt.gz")), (Compression::Gzip, "a.txt".into()));
        assert!(is_jsonl_name(&split_compression(Path::new("x.jsonl.gz")).1));
    }
}
