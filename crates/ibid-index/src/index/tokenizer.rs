//! The tokenizer an index was built with, loaded again for text queries, and refused if it differs.

use super::open::Index;
use crate::error::{Error, Result};
use crate::tokenize::{load_gguf, ByteTokenizer, Tokenizer, TokenizerSpec};

impl Index {
    /// Load the tokenizer this index was built with: `given` if passed (and it matches), else the
    /// one the manifest names.
    pub fn tokenizer(&self, given: Option<&TokenizerSpec>) -> Result<Box<dyn Tokenizer>> {
        let Some(manifest) = &self.manifest else {
            return match given {
                Some(spec) => spec.load(),
                None => {
                    Err(Error::Tokenizer("this index has no manifest, so its tokenizer is unknown: pass --tokenizer or token ids".into()))
                }
            };
        };
        let expected = &manifest.tokenizer;
        let tokenizer: Box<dyn Tokenizer> = match (given, expected.kind.as_str()) {
            (Some(spec), _) => spec.load()?,
            (None, "bytes") => Box::new(ByteTokenizer::new()),
            (None, "gguf") => {
                let path = expected.model_path.as_ref().filter(|p| p.exists()).ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "the index was built with {}, which is not at its recorded path: pass --tokenizer gguf:PATH",
                        expected.model_file.as_deref().unwrap_or("a GGUF model")
                    ))
                })?;
                load_gguf(path)?
            }
            (None, other) => return Err(Error::Tokenizer(format!("unknown tokenizer kind {other:?} in the manifest"))),
        };
        self.check_tokenizer(tokenizer.identity())?;
        Ok(tokenizer)
    }

    /// Refuse a tokenizer whose vocabulary differs from the one that built the index.
    pub fn check_tokenizer(&self, identity: &crate::tokenize::TokenizerIdentity) -> Result<()> {
        if let Some(manifest) = &self.manifest {
            if !manifest.tokenizer.same_vocabulary(identity) {
                return Err(Error::TokenizerMismatch { index: manifest.tokenizer.describe(), given: identity.describe() });
            }
        }
        Ok(())
    }
}
