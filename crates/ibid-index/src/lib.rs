//! ibid's index side: corpora read, tokenized and written as suffix-array indexes in
//! infini-gram's layout, opened safely and queried. No llama.cpp, no HTTP: a GGUF model's
//! tokenizer is supplied by the caller ([`tokenize::set_gguf_loader`]).
//!
//! Data flows one way: [`corpus`] → [`tokenize`] → [`index`] (build, open, check, query) →
//! [`query_engine`] (JSON requests).

pub mod corpus;
pub mod error;
pub mod index;
pub mod query_engine;
pub mod tokenize;

pub use error::{Error, Result};
