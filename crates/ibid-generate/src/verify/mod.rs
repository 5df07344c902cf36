//! The verifier: a llama.cpp model checks a whole tree of draft tokens in one batch and keeps the
//! longest path it agrees with, so the output is the model's own.

pub mod sampling;
pub mod session;
pub mod tree;

pub use sampling::{Chooser, SamplingParams};
pub use session::{walk, Session, SessionOptions, StepOutcome};
pub use tree::DraftTree;
