//! Drafters that cost no neural network: continuations from the running context and from the
//! corpus index. Each proposes scored paths; `MergingDrafter` merges them into one tree, best first.

mod budget;
mod calibration;
mod context;
mod merge;
mod ngram;
mod oracle;
mod ranked;
mod recycle;
mod retrieve;
mod sources;

use crate::verify::SourceId;
use crate::verify::{DraftTree, StepOutcome};

pub use budget::{Budget, MAX_AUTO_BUDGET};
pub use calibration::{Learnt, SourceRecord, LEARNT_VERSION};
pub use context::ContextSource;
pub use merge::{count_by_source, MergingDrafter};
pub use ngram::NgramSource;
pub use oracle::OracleSource;
pub use ranked::{RankedTree, Shadow};
pub use recycle::{RecycleMatrix, RecycleSource};
pub use retrieve::IndexSource;
pub use sources::{OpenedSources, SourceSet};

/// A proposed continuation and how likely the proposer thinks each of its tokens is.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub tokens: Vec<u32>,
    /// Per token: the proposer's estimate that it is accepted once the tokens before it were.
    pub scores: Vec<f64>,
}

impl Candidate {
    /// Every token with the same estimate.
    pub fn uniform(tokens: Vec<u32>, p: f64) -> Self {
        let scores = vec![p; tokens.len()];
        Candidate { tokens, scores }
    }

    /// The estimate that the whole path is accepted.
    pub fn path_score(&self) -> f64 {
        self.scores.iter().product()
    }
}

/// A source of candidates.
pub trait DraftSource {
    fn name(&self) -> &str;
    fn propose(&mut self, context: &[u32], max_depth: usize) -> Vec<Candidate>;

    /// Learn from a verification step; `source` is this proposer's id in the tree.
    fn observe(&mut self, _tree: &DraftTree, _outcome: &StepOutcome, _source: SourceId) {}

    /// Whether an estimate near 1 means near-certain (a long exact match), so that calibration
    /// does not discount it as it discounts the rest.
    fn sure_when_certain(&self) -> bool {
        false
    }

    /// Whether [`DraftSource::observe_logits`] should be called (it costs a pass over the logits).
    fn wants_logits(&self) -> bool {
        false
    }

    /// The model's logits right after `token`, for every node the verifier computed.
    fn observe_logits(&mut self, _token: u32, _logits: &[f32]) {}

    /// Source-specific figures for `--stats`.
    fn details(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The run is over: persist what was learnt, if anything.
    fn finish(&mut self) -> crate::Result<()> {
        Ok(())
    }
}

/// A borrowed proposer is a proposer: a caller can keep a source (and what it learns) across
/// several runs of [`MergingDrafter`].
impl<P: DraftSource + ?Sized> DraftSource for &mut P {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn propose(&mut self, context: &[u32], max_depth: usize) -> Vec<Candidate> {
        (**self).propose(context, max_depth)
    }
    fn observe(&mut self, tree: &DraftTree, outcome: &StepOutcome, source: SourceId) {
        (**self).observe(tree, outcome, source)
    }
    fn sure_when_certain(&self) -> bool {
        (**self).sure_when_certain()
    }
    fn wants_logits(&self) -> bool {
        (**self).wants_logits()
    }
    fn observe_logits(&mut self, token: u32, logits: &[f32]) {
        (**self).observe_logits(token, logits)
    }
    fn details(&self) -> serde_json::Value {
        (**self).details()
    }
    fn finish(&mut self) -> crate::Result<()> {
        (**self).finish()
    }
}

/// Draft and accepted tokens per source, for `--stats` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    pub drafted: u64,
    pub accepted: u64,
}
