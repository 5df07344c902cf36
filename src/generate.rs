//! The generation loop: prompt → (draft → verify)* → tokens. Plain decoding is the same loop with
//! empty drafts, so both modes process the prompt identically and differ only in the batches.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::verify::{Chooser, DraftTree, SamplingParams, Session, StepOutcome};

/// Proposes draft tokens that continue a context.
pub trait Drafter {
    fn name(&self) -> &str;

    /// A tree of at most `budget` nodes continuing `context` (prompt + everything generated).
    fn draft(&mut self, context: &[u32], budget: usize) -> DraftTree;

    /// Learn from a verification step (the tree, what was accepted, and top logits if asked for).
    fn observe(&mut self, _tree: &DraftTree, _outcome: &StepOutcome) {}

    /// Whether the loop should pass the logits of every verified node to `observe_logits`.
    fn wants_logits(&self) -> bool {
        false
    }

    /// The model's logits right after `token` (the pending token or a draft node).
    fn observe_logits(&mut self, _token: u32, _logits: &[f32]) {}

    /// A verification step of `rows` tokens (1 + the tree) took `seconds`, walk included.
    fn observe_cost(&mut self, _rows: usize, _seconds: f64) {}
}

/// Drafts nothing: plain decoding.
pub struct NoDrafts;

impl Drafter for NoDrafts {
    fn name(&self) -> &str {
        "none"
    }
    fn draft(&mut self, _: &[u32], _: usize) -> DraftTree {
        DraftTree::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Most draft nodes per step.
    pub budget: usize,
    /// Stop at end-of-generation tokens (not emitted).
    pub stop_at_eog: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 128, sampling: SamplingParams::greedy(), budget: 16, stop_at_eog: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    MaxTokens,
    EndOfGeneration,
    /// The caller's `on_token` asked to stop (a stop string, a deadline, a client that left).
    Caller,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateReport {
    pub prompt_tokens: usize,
    pub tokens: Vec<u32>,
    /// Top-2 logit margin where each token was chosen.
    pub margins: Vec<f32>,
    pub stop: StopReason,
    pub prompt_s: f64,
    pub decode_s: f64,
    /// Verification batches (one per step).
    pub steps: usize,
    pub drafted: usize,
    pub accepted: usize,
}

impl GenerateReport {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens.len() as f64 / self.decode_s.max(1e-9)
    }

    /// Tokens emitted per verification step (1 for plain decoding).
    pub fn tokens_per_step(&self) -> f64 {
        self.tokens.len() as f64 / self.steps.max(1) as f64
    }
}

/// One generation's bookkeeping between verification steps: how many draft nodes the next step
/// may verify, and what a step's outcome emits. [`generate`] runs one; the server's worker runs
/// several side by side, one per slot of a shared session.
pub struct Generation {
    options: GenerateOptions,
    pub chooser: Chooser,
    pub report: GenerateReport,
    started: Instant,
    done: bool,
}

impl Generation {
    /// A generation whose prompt (`prompt_tokens` long, `prompt_s` to process) is in the session.
    pub fn new(prompt_tokens: usize, options: &GenerateOptions, prompt_s: f64) -> Result<Self> {
        options.sampling.validate()?;
        Ok(Generation {
            options: *options,
            chooser: Chooser::new(options.sampling),
            report: GenerateReport {
                prompt_tokens,
                tokens: Vec::new(),
                margins: Vec::new(),
                stop: StopReason::MaxTokens,
                prompt_s,
                decode_s: 0.0,
                steps: 0,
                drafted: 0,
                accepted: 0,
            },
            started: Instant::now(),
            done: options.max_tokens == 0,
        })
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Most draft nodes for the next step of a sequence `len` tokens long in a context of `n_ctx`:
    /// the caller's budget, capped by the room left and by the tokens still wanted (no point
    /// drafting past the last token that is kept).
    pub fn budget(&self, len: usize, n_ctx: usize) -> Result<usize> {
        let room = n_ctx.saturating_sub(len + 2);
        if room == 0 {
            return Err(Error::Invalid(format!("the context of {n_ctx} tokens is full after {} tokens", self.report.tokens.len())));
        }
        let left = self.options.max_tokens.saturating_sub(self.report.tokens.len());
        Ok(self.options.budget.min(room).min(left.saturating_sub(1)))
    }

    /// Take a verification step of `drafted` nodes: its tokens go to `on_token` (which returns
    /// whether to go on) until the end of generation, `max_tokens` or the caller stops it.
    /// Returns whether the generation is over.
    pub fn absorb(&mut self, model: &Model, drafted: usize, outcome: &StepOutcome, mut on_token: impl FnMut(u32) -> bool) -> bool {
        let report = &mut self.report;
        report.steps += 1;
        report.drafted += drafted;
        report.accepted += outcome.accepted.len();
        for (&t, &m) in outcome.emitted.iter().zip(&outcome.margins) {
            if self.options.stop_at_eog && model.is_eog(t) {
                report.stop = StopReason::EndOfGeneration;
                self.done = true;
                break;
            }
            report.tokens.push(t);
            report.margins.push(m);
            if !on_token(t) {
                report.stop = StopReason::Caller;
                self.done = true;
                break;
            }
            if report.tokens.len() == self.options.max_tokens {
                self.done = true;
                break;
            }
        }
        self.done
    }

    /// The report, with the time since the generation started as its decoding time.
    pub fn finish(mut self) -> GenerateReport {
        self.report.decode_s = self.started.elapsed().as_secs_f64();
        self.report
    }
}

/// Generate after `prompt` (token ids, BOS included when the model wants it). `on_token` sees each
/// token as soon as it is final and returns whether to go on.
pub fn generate(
    session: &mut Session<'_>,
    prompt: &[u32],
    drafter: &mut dyn Drafter,
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenerateReport> {
    options.sampling.validate()?;
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt is empty".into()));
    }
    let model = session.model();
    let start = Instant::now();
    session.prefill(prompt)?;
    let mut generation = Generation::new(prompt.len(), options, start.elapsed().as_secs_f64())?;
    let n_ctx = session.options().n_ctx as usize;
    while !generation.is_done() {
        let started = Instant::now();
        let budget = generation.budget(session.len(), n_ctx)?;
        let mut tree = if budget > 0 { drafter.draft(&session.tokens(), budget) } else { DraftTree::new() };
        tree.truncate(budget.min(tree.len()));
        let drafted = started.elapsed();
        let wants_logits = drafter.wants_logits();
        let pending = session.pending().expect("a prefilled session has a pending token");
        let outcome = session.step(&tree, &mut generation.chooser, |node, logits| {
            if wants_logits {
                drafter.observe_logits(node.map_or(pending, |n| tree.token(n)), logits);
            }
        })?;
        let verified = started.elapsed();
        drafter.observe_cost(1 + tree.len(), (verified - drafted).as_secs_f64());
        drafter.observe(&tree, &outcome);
        tracing::debug!(
            rows = 1 + tree.len(),
            tokens = outcome.emitted.len(),
            draft_ms = drafted.as_secs_f64() * 1e3,
            verify_ms = (verified - drafted).as_secs_f64() * 1e3,
            observe_ms = (started.elapsed() - verified).as_secs_f64() * 1e3,
            "step"
        );
        generation.absorb(model, tree.len(), &outcome, &mut on_token);
    }
    Ok(generation.finish())
}
