//! Test helpers for the index side: brute-force references, an id tokenizer for random token
//! arrays, and infini-gram's file layout written by hand. Shared with the workspace's top-level
//! tests (`tests/common`), where `ibid` names the facade crate; here it names this crate.
#![allow(dead_code)]

use std::path::Path;

use ibid::tokenize::{TokenWidth, Tokenizer, TokenizerIdentity};

/// Reads documents written as whitespace-separated token ids: lets property tests index arbitrary
/// token arrays of any width through the real build pipeline.
pub struct IdTokenizer {
    identity: TokenizerIdentity,
    width: TokenWidth,
}

impl IdTokenizer {
    pub fn new(width: TokenWidth) -> Self {
        IdTokenizer {
            identity: TokenizerIdentity {
                kind: "test-ids".into(),
                model_file: None,
                model_path: None,
                vocab_size: u64::from(width.separator()),
                vocab_hash: format!("ids{}", width.bytes()),
                eos_token_id: None,
            },
            width,
        }
    }

    pub fn encode(ids: &[u32]) -> String {
        ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
    }
}

impl Tokenizer for IdTokenizer {
    fn identity(&self) -> &TokenizerIdentity {
        &self.identity
    }
    fn width(&self) -> TokenWidth {
        self.width
    }
    fn tokenize_piece(&self, text: &str) -> Vec<u32> {
        text.split_whitespace().map(|t| t.parse().unwrap()).collect()
    }
    fn detokenize(&self, tokens: &[u32]) -> String {
        Self::encode(tokens)
    }
}

/// The token stream of one shard as the index stores it: separator + tokens per document.
pub fn shard_stream(width: TokenWidth, docs: &[Vec<u32>]) -> Vec<u32> {
    let mut out = Vec::new();
    for d in docs {
        out.push(width.separator());
        out.extend_from_slice(d);
    }
    out
}

/// Little-endian bytes of a token stream.
pub fn le_bytes(width: TokenWidth, stream: &[u32]) -> Vec<u8> {
    stream.iter().flat_map(|t| t.to_le_bytes()[..width.bytes()].to_vec()).collect()
}

/// Brute force: occurrences of `needle` in `haystack`.
pub fn brute_count(haystack: &[u32], needle: &[u32]) -> u64 {
    if needle.is_empty() {
        return haystack.len() as u64;
    }
    haystack.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// Brute force suffix array (byte offsets) of a little-endian token file.
pub fn brute_table(bytes: &[u8], width: usize) -> Vec<u64> {
    let mut offsets: Vec<u64> = (0..bytes.len() / width).map(|i| (i * width) as u64).collect();
    offsets.sort_by(|&a, &b| bytes[a as usize..].cmp(&bytes[b as usize..]));
    offsets
}

/// Read a table file back into offsets.
pub fn read_table(bytes: &[u8], pointer_width: usize) -> Vec<u64> {
    bytes
        .chunks_exact(pointer_width)
        .map(|c| {
            let mut le = [0u8; 8];
            le[..pointer_width].copy_from_slice(c);
            u64::from_le_bytes(le)
        })
        .collect()
}

/// Documents of pseudo-random u16 tokens with a skewed distribution and copied stretches, so the
/// suffix array has long shared prefixes.
pub fn u16_docs(seed: u64, docs: usize) -> Vec<Vec<u32>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out: Vec<Vec<u32>> = Vec::new();
    for _ in 0..docs {
        let len = 200 + (next() % 3000) as usize;
        let mut d = Vec::with_capacity(len);
        while d.len() < len {
            if d.len() > 50 && next() % 10 == 0 {
                let start = (next() as usize) % (d.len() - 40);
                let copy: Vec<u32> = d[start..start + 40].to_vec();
                d.extend(copy);
            } else {
                let r = next();
                // mostly small ids, some ids that differ between byte orders, some near the top
                let id = match r % 8 {
                    0 => 65_534,
                    1 => 0x0100 | ((r >> 8) as u32 % 4),
                    2 => (r >> 8) as u32 % 60_000,
                    _ => (r >> 8) as u32 % 300,
                };
                d.push(id);
            }
        }
        out.push(d);
    }
    out
}

/// Write `tokenized.N` and `offset.N` the way infini-gram lays them out; returns the stream.
pub fn write_shard(dir: &Path, shard: usize, width: TokenWidth, docs: &[Vec<u32>]) -> Vec<u32> {
    let stream = shard_stream(width, docs);
    let mut offsets = Vec::new();
    let mut at = 0u64;
    for d in docs {
        offsets.extend_from_slice(&at.to_le_bytes());
        at += ((d.len() + 1) * width.bytes()) as u64;
    }
    std::fs::write(dir.join(format!("tokenized.{shard}")), le_bytes(width, &stream)).unwrap();
    std::fs::write(dir.join(format!("offset.{shard}")), offsets).unwrap();
    stream
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
