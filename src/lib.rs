//! ibid: corpus suffix-array indexes in infini-gram's layout, n-gram queries over them, and
//! lossless draft-and-verify generation with a llama.cpp model.
//!
//! Data flows one way: [`corpus`] → [`tokenize`] → [`index`] (build, open, check, query) →
//! [`query_engine`] (JSON requests); and [`draft`] → [`verify`] → [`engine`] (the step loop).
//! [`server`] puts both on HTTP. See `docs/architecture.md` for the map.

pub mod calibrate;
pub mod corpus;
pub mod draft;
pub mod engine;
pub mod error;
pub mod index;
pub mod llama;
pub mod model;
pub mod query_engine;
pub mod server;
pub mod tokenize;
pub mod verify;

pub use error::{Error, Result};
