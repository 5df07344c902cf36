//! The on-disk layout: infini-gram's v4 files per shard plus our `ibid.json` manifest.
//!
//! Per shard N:
//! - `tokenized.N`: every document starts with the separator (all ones of the token width), then
//!   its tokens, little-endian;
//! - `table.N`: the suffix array, one pointer per token position, each the byte offset of a suffix
//!   in `tokenized.N`, `pointer_width` bytes little-endian, sorted by memcmp of the suffix bytes;
//! - `offset.N`: u64 little-endian byte offset of each document's separator;
//! - `metadata.N` / `metaoff.N`: one JSON line per document and the u64 offset of each line.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::corpus::{CorpusOptions, ReadStats};
use crate::error::{Error, IoContext, Result};
use crate::tokenize::{TokenWidth, TokenizerIdentity};

pub const MANIFEST_FILE: &str = "ibid.json";
pub const FORMAT_NAME: &str = "ibid-index";
pub const FORMAT_VERSION: u32 = 1;
pub const LAYOUT: &str = "infini-gram-v4";

/// The kinds of file a shard has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardFile {
    Tokenized,
    Table,
    Offset,
    Metadata,
    Metaoff,
}

impl ShardFile {
    pub const ALL: [ShardFile; 5] = [ShardFile::Tokenized, ShardFile::Table, ShardFile::Offset, ShardFile::Metadata, ShardFile::Metaoff];

    pub fn stem(self) -> &'static str {
        match self {
            ShardFile::Tokenized => "tokenized",
            ShardFile::Table => "table",
            ShardFile::Offset => "offset",
            ShardFile::Metadata => "metadata",
            ShardFile::Metaoff => "metaoff",
        }
    }

    pub fn name(self, shard: usize) -> String {
        format!("{}.{shard}", self.stem())
    }
}

/// Bytes per suffix-array pointer for a token file of `bytes` bytes: infini-gram's
/// `ceil(log2(bytes) / 8)`, at least 1.
pub fn pointer_width(bytes: u64) -> usize {
    let mut width = 1;
    while width < 8 && bytes > 1u64 << (8 * width) {
        width += 1;
    }
    width
}

/// A file's size and xxh3-64 checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub xxh3: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardManifest {
    pub id: usize,
    pub documents: u64,
    /// Token positions, separators included.
    pub tokens: u64,
    pub pointer_width: usize,
    pub files: BTreeMap<String, FileDigest>,
}

/// How the index was built, for `ibid info` and for reproducing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildParams {
    pub ibid_version: String,
    pub inputs: Vec<String>,
    pub corpus: CorpusOptions,
    pub memory_budget: u64,
    pub max_shard_tokens: u64,
    pub piece_bytes: usize,
    pub read: ReadStats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub layout: String,
    pub token_width: TokenWidth,
    pub tokenizer: TokenizerIdentity,
    pub documents: u64,
    /// Token positions over all shards, separators included (infini-gram's `count([])`).
    pub tokens: u64,
    pub shards: Vec<ShardManifest>,
    pub build: BuildParams,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        super::open::regular_file(&path)?;
        let text = std::fs::read(&path).at(&path)?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| Error::corrupt(&path, format!("unreadable manifest: {e}")))?;
        if manifest.format != FORMAT_NAME {
            return Err(Error::corrupt(&path, format!("not an ibid manifest (format {:?})", manifest.format)));
        }
        if manifest.format_version != FORMAT_VERSION {
            return Err(Error::corrupt(
                &path,
                format!("format version {} is not supported (this ibid reads version {FORMAT_VERSION})", manifest.format_version),
            ));
        }
        let docs: u64 = manifest.shards.iter().map(|s| s.documents).sum();
        let tokens: u64 = manifest.shards.iter().map(|s| s.tokens).sum();
        if docs != manifest.documents || tokens != manifest.tokens {
            return Err(Error::corrupt(&path, "shard totals do not add up to the manifest totals"));
        }
        for (i, shard) in manifest.shards.iter().enumerate() {
            if shard.id != i {
                return Err(Error::corrupt(&path, format!("shard {i} is listed as {}", shard.id)));
            }
        }
        // The tokenizer must fit the width: a bytes tokenizer claimed for a u32 index made every
        // text query count 0 without a word.
        let t = &manifest.tokenizer;
        let width = manifest.token_width;
        if (t.kind == "bytes" && width.bytes() != 1) || t.vocab_size > u64::from(width.separator()) + 1 {
            return Err(Error::corrupt(
                &path,
                format!("its tokenizer ({}, {} tokens) does not fit its {}-byte tokens", t.kind, t.vocab_size, width.bytes()),
            ));
        }
        Ok(manifest)
    }

    /// Serialized as it goes to disk: pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serializes");
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_width_matches_infini_gram() {
        // ceil(log2(n) / 8) for n >= 2
        for (n, w) in [(2u64, 1), (255, 1), (256, 1), (257, 2), (65_536, 2), (65_537, 3), (1 << 32, 4), ((1 << 32) + 1, 5)] {
            assert_eq!(pointer_width(n), w, "n={n}");
            let float = ((n as f64).log2() / 8.0).ceil() as usize;
            assert_eq!(pointer_width(n), float.max(1), "n={n}");
        }
        assert_eq!(pointer_width(1), 1);
    }
}
