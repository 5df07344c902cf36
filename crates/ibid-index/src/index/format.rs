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
    /// Set on a part built with `--shard i/N`; absent on whole indexes, merged ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
}

/// Which part of a sharded build an index is: part `index` of `count`, the inputs split by
/// document or by file. N runs with the same inputs and options, one per part, produce the parts
/// of one index (`ibid merge` joins them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub index: usize,
    pub count: usize,
    pub split: Split,
}

/// How a sharded build divides its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Document k (in reading order, documents with text) goes to part k mod N. Every part reads
    /// all the input and tokenizes its share; the parts come out even whatever the files.
    #[default]
    Documents,
    /// Each file goes whole to one part, largest files first to the part with the fewest bytes so
    /// far. Each part reads only its files: the split for many-file corpora.
    Files,
}

impl Part {
    /// Part `i` of `n` from `"i/n"`.
    pub fn parse(text: &str, split: Split) -> Result<Part> {
        let bad = || Error::Argument(format!("--shard takes I/N with 0 <= I < N, not {text:?}"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Part { index, count, split })
    }

    pub fn takes_document(&self, number: u64) -> bool {
        self.split != Split::Documents || number % self.count as u64 == self.index as u64
    }

    /// The files of this part, in their reading order: the largest files first, each to the part
    /// with the fewest bytes so far (ties to the lowest part), so the split depends only on the
    /// files' order and sizes.
    pub fn files<T>(&self, files: Vec<T>, size: impl Fn(&T) -> u64) -> Vec<T> {
        if self.split != Split::Files {
            return files;
        }
        let sizes: Vec<u64> = files.iter().map(&size).collect();
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
        let mut load = vec![0u64; self.count];
        let mut owner = vec![0usize; files.len()];
        for i in order {
            let p = (0..self.count).min_by_key(|&p| (load[p], p)).expect("count >= 1");
            owner[i] = p;
            load[p] += sizes[i].max(1);
        }
        files.into_iter().zip(owner).filter(|(_, p)| *p == self.index).map(|(f, _)| f).collect()
    }
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

    #[test]
    fn parts_parse_and_split_every_input_exactly_once() {
        assert_eq!(Part::parse("2/5", Split::Files).unwrap(), Part { index: 2, count: 5, split: Split::Files });
        for bad in ["5/5", "1/0", "x/2", "3", "-1/2", "1/2/3"] {
            assert!(matches!(Part::parse(bad, Split::Documents), Err(Error::Argument(_))), "{bad}");
        }
        let sizes: Vec<u64> = vec![7, 0, 100, 3, 3, 50, 0, 9, 1];
        for count in 1..=6 {
            let parts: Vec<Part> = (0..count).map(|index| Part { index, count, split: Split::Files }).collect();
            let mut seen: Vec<usize> = Vec::new();
            let mut loads = Vec::new();
            for p in &parts {
                let mine = p.files((0..sizes.len()).collect(), |&i| sizes[i]);
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "reading order kept");
                loads.push(mine.iter().map(|&i| sizes[i]).sum::<u64>());
                seen.extend(mine);
            }
            seen.sort();
            assert_eq!(seen, (0..sizes.len()).collect::<Vec<_>>(), "{count} parts: every file once");
            if count == 2 {
                assert_eq!(loads, vec![100, 73], "largest first to the lightest part");
            }
            for d in 0..40u64 {
                let takers = (0..count).filter(|&index| Part { index, count, split: Split::Documents }.takes_document(d)).count();
                assert_eq!(takers, 1, "document {d} in exactly one of {count} parts");
            }
        }
    }
}
