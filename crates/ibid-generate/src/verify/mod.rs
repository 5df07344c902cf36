//! The verifier: a llama.cpp model checks a whole tree of draft tokens in one batch and keeps the
//! longest path it agrees with, so the output is the model's own.

mod sampling;
mod session;
mod tree;

pub use sampling::{argmax, distribution, draw, top2, top_k, Chooser, SamplingParams};
pub use session::{walk, Session, SessionOptions, SlotStep, StepOutcome, MAX_SEQUENCES};
pub use tree::{DraftTree, SourceId};
