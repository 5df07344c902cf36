//! ibid: corpus suffix-array indexes in infini-gram's layout, n-gram queries over them, and (in
//! later modules) lossless draft-and-verify generation with a llama.cpp model.
//!
//! Data flows one way: [`corpus`] → [`tokenize`] → [`index`] (build, open, query).

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
pub mod tokenize;
pub mod verify;

pub use error::{Error, Result};
