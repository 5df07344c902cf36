//! The one llama.cpp backend of the process. llama.cpp may be initialised only once, so every
//! user (tokenizer, verifier) goes through here.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

use crate::error::{Error, Result};

static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();

/// The process-wide llama.cpp backend. llama.cpp's own log lines are silenced unless
/// `IBID_LLAMA_LOG` is set, so they do not mix with our output.
pub fn backend() -> Result<&'static LlamaBackend> {
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("IBID_LLAMA_LOG").is_none() {
                backend.void_logs();
            }
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| Error::Tokenizer(format!("cannot start llama.cpp: {e}")))
}
