//! ibid's generation side: a llama.cpp model verifies draft trees that cost no neural network
//! (the running context, n-grams, the corpus index, a token-recycling matrix) in one batch per
//! step, losslessly.
//!
//! Data flows one way: [`draft`] (sources → one ranked tree → budget) → [`verify`] (batches,
//! cache, choice) → [`engine`] (the step loop over slots). [`calibrate`] prices batches;
//! [`model`] and [`llama`] hold llama.cpp.

pub mod calibrate;
pub mod draft;
pub mod engine;
mod gguf;
pub mod llama;
pub mod model;
pub mod verify;

pub use gguf::GgufTokenizer;
pub use ibid_index::{Error, Result};

// The index side's modules under the names the code here uses.
use ibid_index::{error, index};

/// The index side's tokenizers and the GGUF one that needs llama.cpp.
pub mod tokenize {
    pub use crate::gguf::GgufTokenizer;
    pub use ibid_index::tokenize::*;
}

/// Let the index side load GGUF tokenizers (`gguf:PATH` specs, indexes built with one). Called by
/// the command line at start and by every GGUF tokenizer load; calling it again does nothing.
pub fn register_tokenizers() {
    ibid_index::tokenize::set_gguf_loader(|path| Ok(Box::new(GgufTokenizer::load(path)?)));
}
