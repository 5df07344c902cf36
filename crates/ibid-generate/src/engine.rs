//! The generation engine: one step loop for every caller. A step drafts a tree for each running
//! generation (a slot of the session), cuts the trees together by what the batch costs, verifies
//! them in one batch and hands each generation its tokens. `ibid generate` is the engine with one
//! slot ([`generate`]); the server's worker runs it over several. Plain decoding is the same loop
//! with empty drafts, so both modes process the prompt identically and differ only in the batches.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::draft::{Budget, DraftSource, MergingDrafter, RankedTree, MAX_AUTO_BUDGET};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::verify::SlotStep;
use crate::verify::{Chooser, DraftTree, SamplingParams, Session, StepOutcome};

/// Makes draft trees that continue a context, and learns from what was accepted.
pub trait Drafter {
    /// Up to `max_nodes` nodes continuing `context` (prompt + everything generated), best first
    /// (a child never before its parent), with the estimated probability that each node's path
    /// is accepted: the engine cuts the tree by them.
    fn rank(&mut self, context: &[u32], max_nodes: usize) -> RankedTree;

    /// Learn from a verification step of `drafted` (cut as verified).
    fn observe(&mut self, _drafted: &RankedTree, _outcome: &StepOutcome) {}

    /// Whether the engine should pass the logits of every verified node to `observe_logits`.
    fn wants_logits(&self) -> bool {
        false
    }

    /// The model's logits right after `token` (the pending token or a draft node).
    fn observe_logits(&mut self, _token: u32, _logits: &[f32]) {}

    /// The run is over: persist what was learnt, if anything.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A borrowed drafter drafts: a caller keeps its drafter (and what it learnt) across engines.
impl<D: Drafter + ?Sized> Drafter for &mut D {
    fn rank(&mut self, context: &[u32], max_nodes: usize) -> RankedTree {
        (**self).rank(context, max_nodes)
    }
    fn observe(&mut self, drafted: &RankedTree, outcome: &StepOutcome) {
        (**self).observe(drafted, outcome)
    }
    fn wants_logits(&self) -> bool {
        (**self).wants_logits()
    }
    fn observe_logits(&mut self, token: u32, logits: &[f32]) {
        (**self).observe_logits(token, logits)
    }
    fn finish(&mut self) -> Result<()> {
        (**self).finish()
    }
}

/// Drafts nothing: plain decoding.
pub struct NoDrafts;

impl Drafter for NoDrafts {
    fn rank(&mut self, _: &[u32], _: usize) -> RankedTree {
        RankedTree::default()
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
            return Err(Error::ContextFull { n_ctx, generated: Some(self.report.tokens.len()) });
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

/// How many nodes a step verifies.
pub enum Sizing {
    /// As many as the generation allows (its options' `budget`, the room left).
    Fixed,
    /// The count that maximizes expected tokens per unit of time on this machine: its cost curve
    /// (measured at first use; `refine` adds a round to a quick curve, worth it for a server),
    /// trees of at most `max` nodes for each of `slots` generations verified together.
    Auto { max: usize, slots: usize, refine: bool },
}

impl Sizing {
    /// The command line's `--budget`: `auto` or a number of nodes.
    pub fn from_arg(arg: &str) -> Result<(Sizing, usize)> {
        if arg == "auto" {
            return Ok((Sizing::Auto { max: MAX_AUTO_BUDGET, slots: 1, refine: false }, MAX_AUTO_BUDGET));
        }
        let nodes = arg.parse::<usize>().map_err(|_| Error::Argument(format!("--budget takes a number or auto, not {arg:?}")))?;
        Ok((Sizing::Fixed, nodes))
    }
}

/// A generation's turn in a step: the slot it runs in and its bookkeeping.
pub struct Turn<'g> {
    pub slot: usize,
    pub generation: &'g mut Generation,
}

/// What a step did for one turn: the tree it verified and the outcome.
pub struct Verified {
    pub tree: DraftTree,
    pub outcome: StepOutcome,
}

/// A session, a drafter and the budget that sizes its trees: the one step loop, over one slot or
/// several. The exactness guarantee lives here: every token a generation gets is the one the
/// verifier chose, whatever was drafted.
pub struct Engine<'s, 'm, D: Drafter> {
    session: &'s mut Session<'m>,
    drafter: D,
    budget: Option<Budget>,
    /// How many turns verified a tree of each size, for `--stats`: a count per size, so a server
    /// that runs for months holds no more than `max + 1` entries.
    budgets: BTreeMap<usize, u64>,
}

impl<'s, 'm, D: Drafter> Engine<'s, 'm, D> {
    /// An engine over `session`: `budget` sizes the trees (without one, each turn verifies as
    /// many nodes as its generation allows).
    pub fn new(session: &'s mut Session<'m>, drafter: D, budget: Option<Budget>) -> Self {
        Engine { session, drafter, budget, budgets: BTreeMap::new() }
    }

    pub fn session(&mut self) -> &mut Session<'m> {
        self.session
    }

    pub fn drafter(&self) -> &D {
        &self.drafter
    }

    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    /// Nodes verified per turn so far.
    pub fn budgets(&self) -> &BTreeMap<usize, u64> {
        &self.budgets
    }

    /// Prefill `prompt` into `slot` and start its generation. Returns it and the prompt tokens
    /// that were already cached.
    pub fn start(&mut self, slot: usize, prompt: &[u32], options: &GenerateOptions) -> Result<(Generation, usize)> {
        check_request(prompt, options)?;
        let started = Instant::now();
        let cached = self.session.prefill_slot(slot, prompt)?;
        Ok((Generation::new(prompt.len(), options, started.elapsed().as_secs_f64())?, cached))
    }

    /// One verification step for every turn: draft each tree, cut them together by the batch's
    /// cost, verify all in one batch. Per turn, what was verified, or why the turn could not go
    /// on (its context is full: the others go on); the caller passes each outcome to its
    /// generation ([`Generation::absorb`]). An error of the whole batch is returned as such.
    pub fn step(&mut self, turns: &mut [Turn<'_>], request_ctx: usize) -> Result<Vec<Result<Verified>>> {
        let started = Instant::now();
        let max_paths = self.session.options().max_sequences as usize;
        let mut results: Vec<Option<Result<Verified>>> = Vec::with_capacity(turns.len());
        let mut live: Vec<usize> = Vec::with_capacity(turns.len());
        let mut ranked: Vec<RankedTree> = Vec::with_capacity(turns.len());
        for (i, t) in turns.iter().enumerate() {
            match t.generation.budget(self.session.slot_len(t.slot), request_ctx) {
                Ok(most) => {
                    let most = self.budget.as_ref().map_or(most, |b| most.min(b.max()));
                    let mut tree =
                        if most > 0 { self.drafter.rank(&self.session.slot_tokens(t.slot), most) } else { RankedTree::default() };
                    tree.truncate(most.min(tree.tree.len()));
                    tree.limit_leaves(max_paths);
                    ranked.push(tree);
                    live.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if live.is_empty() {
            return Ok(results.into_iter().map(|r| r.expect("every turn failed")).collect());
        }
        if let Some(budget) = self.budget.as_mut() {
            let path_ps: Vec<&[f64]> = ranked.iter().map(|r| r.path_p.as_slice()).collect();
            let cuts = budget.choose_joint(&path_ps);
            for (r, keep) in ranked.iter_mut().zip(cuts) {
                r.truncate(keep);
            }
        }
        for r in &ranked {
            *self.budgets.entry(r.tree.len()).or_insert(0) += 1;
        }
        let pendings: Vec<u32> = live
            .iter()
            .map(|&i| {
                self.session.slot_pending(turns[i].slot).ok_or_else(|| Error::Session("nothing to continue: prefill a prompt first".into()))
            })
            .collect::<Result<_>>()?;
        let mut work: Vec<SlotStep<'_>> = Vec::with_capacity(live.len());
        let mut live_turns = live.iter().copied().peekable();
        for (i, t) in turns.iter_mut().enumerate() {
            if live_turns.next_if_eq(&i).is_some() {
                let k = work.len();
                work.push(SlotStep { slot: t.slot, tree: &ranked[k].tree, chooser: &mut t.generation.chooser });
            }
        }
        let wants_logits = self.drafter.wants_logits();
        let drafted = started.elapsed();
        let mut observing = std::time::Duration::ZERO;
        let drafter = &mut self.drafter;
        let outcomes = self.session.step_slots(&mut work, |i, node, logits| {
            if wants_logits {
                let t = Instant::now();
                drafter.observe_logits(node.map_or(pendings[i], |n| ranked[i].tree.token(n)), logits);
                observing += t.elapsed();
            }
        })?;
        drop(work);
        let verified = started.elapsed();
        let rows: usize = ranked.iter().map(|k| 1 + k.tree.len()).sum();
        if let Some(budget) = self.budget.as_mut() {
            budget.observe(rows, (verified - drafted).as_secs_f64());
        }
        tracing::debug!(
            slots = live.len(),
            rows,
            tokens = outcomes.iter().map(|o| o.emitted.len()).sum::<usize>(),
            draft_ms = drafted.as_secs_f64() * 1e3,
            verify_ms = (verified - drafted).as_secs_f64() * 1e3,
            observe_ms = observing.as_secs_f64() * 1e3,
            "step"
        );
        for ((i, k), outcome) in live.into_iter().zip(ranked).zip(outcomes) {
            self.drafter.observe(&k, &outcome);
            if let Some(budget) = self.budget.as_mut() {
                budget.observe_tree(k.tree.len(), outcome.accepted.len());
            }
            results[i] = Some(Ok(Verified { tree: k.tree, outcome }));
        }
        Ok(results.into_iter().map(|r| r.expect("every turn has a result")).collect())
    }

    /// The run is over: the drafter keeps what it learnt, and with a budget, what steps cost here
    /// is kept for the next run's curve. Returns the problems (nothing is lost but the lesson).
    pub fn finish(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.drafter.finish() {
            problems.push(format!("cannot save what the drafters learnt: {e}"));
        }
        if let Some(budget) = &self.budget {
            let model = self.session.model().path().to_path_buf();
            let threads = self.session.options().threads;
            if let Err(e) = crate::calibrate::keep_observed(&model, threads, budget.observed_extra()) {
                problems.push(format!("cannot keep what steps cost: {e}"));
            }
        }
        problems
    }
}

impl<'s, 'm, 'i> Engine<'s, 'm, MergingDrafter<'i>> {
    /// The engine the command line and the server run: `sources` merged, sized as `sizing` says.
    /// With sources and an automatic budget, this machine's cost curve prices the trees and what
    /// the sources' estimates were worth in earlier runs is remembered. Returns the engine, the
    /// seconds spent measuring the curve (if it was), and problems that were worked around.
    pub fn with_sources(
        session: &'s mut Session<'m>,
        sources: Vec<Box<dyn DraftSource + 'i>>,
        sizing: Sizing,
    ) -> Result<(Self, Option<f64>, Vec<String>)> {
        let drafting = !sources.is_empty();
        let mut drafter = MergingDrafter::new(sources);
        let mut problems = Vec::new();
        let (budget, calibrate_s) = match sizing {
            Sizing::Auto { max, slots, refine } if drafting => {
                let (curve, seconds) = crate::calibrate::for_session(session, refine)?;
                let model = session.model().path();
                if let Err(e) = drafter.remember(crate::calibrate::learnt_path(model), model) {
                    problems.push(format!("{e}; learning the sources' acceptance afresh"));
                }
                (Some(Budget::for_slots(Some(&curve), max, slots)), Some(seconds))
            }
            _ => (None, None),
        };
        Ok((Engine::new(session, drafter, budget), calibrate_s, problems))
    }
}

/// Generate after `prompt` (token ids, BOS included when the model wants it) in slot 0 of
/// `engine`'s session. `on_token` sees each token as soon as it is final and returns whether to go on.
pub fn generate_with<D: Drafter>(
    engine: &mut Engine<'_, '_, D>,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenerateReport> {
    let model = engine.session().model();
    let n_ctx = engine.session().options().n_ctx as usize;
    // A request that cannot run leaves the session as it was; one that can replaces what it held.
    check_request(prompt, options)?;
    engine.session().reset();
    let (mut generation, _) = engine.start(0, prompt, options)?;
    while !generation.is_done() {
        let mut turns = [Turn { slot: 0, generation: &mut generation }];
        let verified = engine.step(&mut turns, n_ctx)?.pop().expect("one turn")?;
        generation.absorb(model, verified.tree.len(), &verified.outcome, &mut on_token);
    }
    Ok(generation.finish())
}

/// Refuse a request that cannot run, before it touches the session.
fn check_request(prompt: &[u32], options: &GenerateOptions) -> Result<()> {
    options.sampling.validate()?;
    if prompt.is_empty() {
        return Err(Error::Prompt("the prompt is empty".into()));
    }
    Ok(())
}

/// [`generate_with`] on an engine of `session` and `drafter` whose trees are as large as
/// `options.budget` allows.
pub fn generate(
    session: &mut Session<'_>,
    prompt: &[u32],
    drafter: &mut dyn Drafter,
    options: &GenerateOptions,
    on_token: impl FnMut(u32) -> bool,
) -> Result<GenerateReport> {
    generate_with(&mut Engine::new(session, drafter, None), prompt, options, on_token)
}
