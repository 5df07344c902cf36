//! ibid: corpus suffix-array indexes in infini-gram's layout, n-gram queries over them, and
//! lossless draft-and-verify generation with a llama.cpp model; the three crates under one name.
//!
//! - [`ibid_index`]: [`corpus`] → [`tokenize`] → [`index`] (build, open, check, query) →
//!   [`query_engine`] (JSON requests). No llama.cpp, tokio or axum.
//! - [`ibid_generate`]: [`draft`] → [`verify`] → [`engine`] (the step loop), with [`model`],
//!   [`llama`] and [`calibrate`].
//! - [`ibid_server`]: [`server`], both on HTTP.
//!
//! See `docs/architecture.md` for the map.

pub use ibid_generate::{calibrate, draft, engine, llama, model, register_tokenizers, verify};
pub use ibid_index::{corpus, error, index, query_engine, Error, Result};
pub use ibid_server as server;

/// The index side's tokenizers and the GGUF one (which needs llama.cpp).
pub mod tokenize {
    pub use ibid_generate::tokenize::*;
}
