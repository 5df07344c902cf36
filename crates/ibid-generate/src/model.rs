//! A GGUF model loaded whole through llama.cpp: the verifier's weights and its tokenizer.

use std::path::{Path, PathBuf};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::tokenize::{GgufTokenizer, Tokenizer};

pub struct Model {
    tokenizer: GgufTokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("path", &self.path).field("vocab_size", &self.n_vocab()).finish()
    }
}

impl Model {
    /// Load a model's weights and vocabulary.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::Model { path: path.to_path_buf(), reason: "no such file".into() });
        }
        Ok(Model { tokenizer: GgufTokenizer::load_with(path, false)?, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    pub(crate) fn llama(&self) -> &LlamaModel {
        self.tokenizer.model()
    }

    pub fn n_vocab(&self) -> usize {
        self.tokenizer.identity().vocab_size as usize
    }

    /// Tokens of a prompt, with BOS when the model wants one. Special tokens in the text (such as
    /// `<start_of_turn>`) are parsed, as chat prompts need.
    pub fn tokenize_prompt(&self, text: &str) -> Vec<u32> {
        let vocab = self.llama().vocab();
        let mut out = Vec::new();
        if vocab.should_add_bos() {
            out.push(vocab.bos().0 as u32);
        }
        out.extend(vocab.tokenize(text.as_bytes(), false, true).into_iter().map(|t| t.0 as u32));
        out
    }

    /// The chat template: the one stored in the GGUF file, else llama.cpp's built-in template of
    /// the model's family (some GGUF conversions, such as the Gemma 3 270M test model, ship none).
    /// The second value says which.
    pub fn chat_template(&self) -> Result<(llama_cpp_2::model::LlamaChatTemplate, String)> {
        if let Ok(t) = self.llama().chat_template(None) {
            return Ok((t, "gguf".into()));
        }
        let arch = self.llama().meta_val_str("general.architecture").unwrap_or_default();
        let family = ["gemma", "llama3", "mistral", "phi3", "qwen", "chatml"].into_iter().find(|f| arch.starts_with(f));
        match family {
            Some(f) => {
                let name = if f == "qwen" { "chatml" } else { f };
                Ok((llama_cpp_2::model::LlamaChatTemplate::new(name).expect("no NUL"), format!("built-in {name}")))
            }
            None => {
                Err(Error::Prompt(format!("{} has no chat template (architecture {arch:?}): use completions instead", self.path.display())))
            }
        }
    }

    /// A chat as prompt text, rendered with [`Model::chat_template`], ending where the assistant's
    /// turn begins.
    pub fn render_chat(&self, messages: &[(String, String)]) -> Result<String> {
        let bad = |reason: String| Error::Prompt(reason);
        let (template, _) = self.chat_template()?;
        let chat = messages
            .iter()
            .map(|(role, content)| {
                llama_cpp_2::model::LlamaChatMessage::new(role.clone(), content.clone())
                    .map_err(|_| bad("a chat message contains a NUL byte".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        self.llama()
            .apply_chat_template(&template, &chat, true)
            .map_err(|e| bad(format!("the chat template could not render these messages: {e}")))
    }

    /// End-of-generation tokens (EOS, end of turn, ...).
    pub fn is_eog(&self, token: u32) -> bool {
        (token as usize) < self.n_vocab() && self.llama().vocab().is_eog(LlamaToken(token as i32))
    }

    /// The bytes a token stands for (a token may hold part of a UTF-8 character).
    pub fn token_bytes(&self, token: u32) -> Vec<u8> {
        if token as usize >= self.n_vocab() {
            return Vec::new();
        }
        self.llama().vocab().token_to_piece(LlamaToken(token as i32), false, None)
    }

    /// Refuse an index whose tokenizer is not this model's vocabulary.
    pub fn check_index(&self, index: &Index) -> Result<()> {
        match &index.manifest {
            Some(_) => index.check_tokenizer(self.tokenizer.identity()),
            None => Err(Error::Tokenizer(format!(
                "{} has no manifest, so its tokenizer cannot be checked against {}",
                index.dir.display(),
                self.path.display()
            ))),
        }
    }
}

/// Turns a token stream into text as it arrives, holding back bytes of an unfinished character.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    pub fn push(&mut self, model: &Model, token: u32) -> String {
        self.pending.extend(model.token_bytes(token));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(), // invalid, not merely unfinished: let it through lossily
        };
        let out = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
        self.pending.drain(..valid);
        out
    }

    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
