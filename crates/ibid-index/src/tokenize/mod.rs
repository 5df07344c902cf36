//! Tokenizers: UTF-8 bytes, or the vocabulary of a GGUF model.
//!
//! Long documents are cut into pieces at places where cutting does not change the tokens, and the
//! pieces are tokenized in parallel (the GGUF tokenizer is superlinear on long input).

mod bytes;
mod pieces;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use bytes::ByteTokenizer;
pub use pieces::{pieces, PIECE_TARGET_BYTES};

use crate::error::{Error, Result};

/// Bytes per token on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum TokenWidth {
    U8,
    U16,
    U32,
}

impl TokenWidth {
    pub const fn bytes(self) -> usize {
        match self {
            TokenWidth::U8 => 1,
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }

    /// The document separator: all ones in this width. No token may take this value.
    pub const fn separator(self) -> u32 {
        match self {
            TokenWidth::U8 => 0xFF,
            TokenWidth::U16 => 0xFFFF,
            TokenWidth::U32 => 0xFFFF_FFFF,
        }
    }

    /// The narrowest width whose separator is above every id of a vocabulary of this size.
    pub fn for_vocab_size(vocab_size: u64) -> Result<TokenWidth> {
        [TokenWidth::U8, TokenWidth::U16, TokenWidth::U32]
            .into_iter()
            .find(|w| vocab_size <= u64::from(w.separator()))
            .ok_or_else(|| Error::Tokenizer(format!("vocabulary of {vocab_size} tokens does not fit 32 bits")))
    }

    pub fn from_bytes(n: usize) -> Option<TokenWidth> {
        match n {
            1 => Some(TokenWidth::U8),
            2 => Some(TokenWidth::U16),
            4 => Some(TokenWidth::U32),
            _ => None,
        }
    }
}

impl From<TokenWidth> for u8 {
    fn from(w: TokenWidth) -> u8 {
        w.bytes() as u8
    }
}

impl TryFrom<u8> for TokenWidth {
    type Error = String;
    fn try_from(n: u8) -> std::result::Result<Self, String> {
        TokenWidth::from_bytes(n as usize).ok_or_else(|| format!("token width must be 1, 2 or 4 bytes, not {n}"))
    }
}

/// What made an index's tokens, so a later mismatch can be refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerIdentity {
    /// `bytes` or `gguf`.
    pub kind: String,
    /// The model's file name (GGUF only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_file: Option<String>,
    /// Where the model was when the index was built: a hint for loading it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<PathBuf>,
    pub vocab_size: u64,
    /// xxh3-64 of the vocabulary's token texts, in hex.
    pub vocab_hash: String,
    /// The model's end-of-sequence token: next-token queries report "end of document" as it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<u32>,
}

impl TokenizerIdentity {
    /// Same vocabulary, wherever the file lives.
    pub fn same_vocabulary(&self, other: &TokenizerIdentity) -> bool {
        self.kind == other.kind && self.vocab_size == other.vocab_size && self.vocab_hash == other.vocab_hash
    }

    pub fn describe(&self) -> String {
        match &self.model_file {
            Some(f) => format!("{} {f} ({} tokens, vocab {})", self.kind, self.vocab_size, self.vocab_hash),
            None => format!("{} ({} tokens)", self.kind, self.vocab_size),
        }
    }
}

/// Turns text into token ids.
pub trait Tokenizer: Send + Sync {
    fn identity(&self) -> &TokenizerIdentity;

    fn width(&self) -> TokenWidth;

    /// Tokens of one short piece of text (no BOS/EOS, special tokens not parsed).
    fn tokenize_piece(&self, text: &str) -> Vec<u32>;

    /// The text of tokens, lossily decoded where a token splits a UTF-8 sequence.
    fn detokenize(&self, tokens: &[u32]) -> String;
}

/// `bytes` or `gguf:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSpec {
    Bytes,
    Gguf(PathBuf),
}

impl std::str::FromStr for TokenizerSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "bytes" {
            Ok(TokenizerSpec::Bytes)
        } else if let Some(path) = s.strip_prefix("gguf:") {
            Ok(TokenizerSpec::Gguf(PathBuf::from(path)))
        } else {
            Err(format!("unknown tokenizer {s:?}: use `bytes` or `gguf:PATH`"))
        }
    }
}

/// Loads the tokenizer of a GGUF model file.
pub type GgufLoader = fn(&Path) -> Result<Box<dyn Tokenizer>>;

static GGUF_LOADER: OnceLock<GgufLoader> = OnceLock::new();

/// Supply the GGUF tokenizer: this crate reads no model files (that needs llama.cpp), so the
/// generation side registers its loader (`ibid_generate::register_tokenizers`). The first
/// registration stays.
pub fn set_gguf_loader(loader: GgufLoader) {
    let _ = GGUF_LOADER.set(loader);
}

/// Load a GGUF model's tokenizer with the registered loader.
pub fn load_gguf(path: &Path) -> Result<Box<dyn Tokenizer>> {
    let loader = GGUF_LOADER.get().ok_or_else(|| {
        Error::Tokenizer(format!("{}: no GGUF tokenizer is available in this program (it needs llama.cpp)", path.display()))
    })?;
    loader(path)
}

impl TokenizerSpec {
    pub fn load(&self) -> Result<Box<dyn Tokenizer>> {
        Ok(match self {
            TokenizerSpec::Bytes => Box::new(ByteTokenizer::new()),
            TokenizerSpec::Gguf(path) => load_gguf(path)?,
        })
    }
}

/// Tokenize a whole text: cut into pieces, tokenized in parallel, joined in order.
pub fn tokenize(tokenizer: &dyn Tokenizer, text: &str) -> Vec<u32> {
    tokenize_batch(tokenizer, &[text]).pop().unwrap_or_default()
}

/// Tokenize many documents at once; pieces of all of them share the thread pool.
pub fn tokenize_batch<S: AsRef<str> + Sync>(tokenizer: &dyn Tokenizer, texts: &[S]) -> Vec<Vec<u32>> {
    let jobs: Vec<(usize, std::ops::Range<usize>)> =
        texts.iter().enumerate().flat_map(|(doc, text)| pieces(text.as_ref()).into_iter().map(move |range| (doc, range))).collect();
    let tokenized: Vec<(usize, Vec<u32>)> =
        jobs.into_par_iter().map(|(doc, range)| (doc, tokenizer.tokenize_piece(&texts[doc].as_ref()[range]))).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); texts.len()];
    for (doc, tokens) in tokenized {
        if out[doc].is_empty() {
            out[doc] = tokens;
        } else {
            out[doc].extend_from_slice(&tokens);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn width_follows_vocabulary_size() {
        assert_eq!(TokenWidth::for_vocab_size(255).unwrap(), TokenWidth::U8);
        assert_eq!(TokenWidth::for_vocab_size(256).unwrap(), TokenWidth::U16);
        assert_eq!(TokenWidth::for_vocab_size(65_535).unwrap(), TokenWidth::U16);
        assert_eq!(TokenWidth::for_vocab_size(65_536).unwrap(), TokenWidth::U32);
        assert_eq!(TokenWidth::for_vocab_size(262_144).unwrap(), TokenWidth::U32);
        assert!(TokenWidth::for_vocab_size(1 << 40).is_err());
    }

    #[test]
    fn spec_parses() {
        assert_eq!("bytes".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::Bytes);
        assert_eq!("gguf:/m.gguf".parse::<TokenizerSpec>().unwrap(), TokenizerSpec::Gguf("/m.gguf".into()));
        assert!("bpe".parse::<TokenizerSpec>().is_err());
    }

    #[test]
    fn batch_keeps_document_order() {
        let t = ByteTokenizer::new();
        let long = "word ".repeat(20_000);
        let docs = ["ab", long.as_str(), "", "c"];
        let out = tokenize_batch(&t, &docs);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], vec![97, 98]);
        assert_eq!(out[1].len(), long.len());
        assert!(out[2].is_empty());
        assert_eq!(out[3], vec![99]);
    }
}
