use std::io::Read;
use std::path::{Path, PathBuf};

use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::{Error, Result};
use crate::tokenize::{TokenWidth, Tokenizer, TokenizerIdentity};

/// The tokenizer stored in a GGUF model file, loaded without the weights.
pub struct GgufTokenizer {
    model: LlamaModel,
    identity: TokenizerIdentity,
    width: TokenWidth,
}

/// Refuse anything that is not a GGUF file before llama.cpp sees it.
pub(crate) fn check_gguf_magic(path: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(Error::Model { path: path.to_path_buf(), reason: "the file does not start with the GGUF magic".into() });
    }
    Ok(())
}

impl GgufTokenizer {
    /// The vocabulary alone: fast, no weights in memory.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, true)
    }

    /// The vocabulary, and with `vocab_only = false` the whole model (for a verifier).
    pub fn load_with(path: &Path, vocab_only: bool) -> Result<Self> {
        // Whoever loads one can have the index side load them too (indexes built with one).
        crate::register_tokenizers();
        check_gguf_magic(path)?;
        let backend = crate::llama::backend()?;
        let params = LlamaModelParams::default().with_vocab_only(vocab_only);
        let what = if vocab_only { "its vocabulary" } else { "it" };
        let model = LlamaModel::load_from_file(backend, path, &params).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            reason: format!("llama.cpp could not load {what} ({e}); set IBID_LLAMA_LOG=1 for details"),
        })?;
        let vocab = model.vocab();
        let n = vocab.n_tokens();
        if n <= 0 {
            return Err(Error::Model { path: path.to_path_buf(), reason: "the vocabulary is empty".into() });
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for id in 0..n {
            // ids in 0..n are valid; llama.cpp aborts on ids outside the vocabulary.
            if let Some(text) = vocab.text(LlamaToken(id)) {
                hasher.update(text.to_bytes());
            }
            hasher.update(&[0]);
        }
        let vocab_size = n as u64;
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
        let identity = TokenizerIdentity {
            kind: "gguf".into(),
            model_file: path.file_name().map(|f| f.to_string_lossy().into_owned()),
            model_path: Some(absolute),
            vocab_size,
            vocab_hash: format!("{:016x}", hasher.digest()),
            eos_token_id: u32::try_from(vocab.eos().0).ok(),
        };
        Ok(GgufTokenizer { width: TokenWidth::for_vocab_size(vocab_size)?, model, identity })
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }
}

impl Tokenizer for GgufTokenizer {
    fn identity(&self) -> &TokenizerIdentity {
        &self.identity
    }

    fn width(&self) -> TokenWidth {
        self.width
    }

    fn tokenize_piece(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        self.model.vocab().tokenize(text.as_bytes(), false, false).into_iter().map(|t| t.0 as u32).collect()
    }

    fn detokenize(&self, tokens: &[u32]) -> String {
        let n = self.identity.vocab_size;
        let tokens: Vec<LlamaToken> = tokens.iter().filter(|&&t| u64::from(t) < n).map(|&t| LlamaToken(t as i32)).collect();
        let bytes = self.model.vocab().detokenize(&tokens, false, false);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
