//! ibid: corpus suffix-array indexes in infini-gram's layout, n-gram queries over them, and
//! lossless draft-and-verify generation with a llama.cpp model.
//!
//! Data flows one way: [`corpus`] → [`tokenize`] → [`index`] (build, open, query) → [`draft`]
//! → [`verify`] → [`generate`]; [`serve`] and [`server`] put queries and generation on HTTP.

pub mod api;
pub mod calibrate;
pub mod corpus;
pub mod draft;
pub mod error;
pub mod generate;
pub mod index;
pub mod llama;
pub mod model;
pub mod serve;
pub mod server;
pub mod tokenize;
pub mod verify;

pub use error::{Error, Result};
