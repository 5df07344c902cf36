//! The generation worker: one thread owns the llama.cpp session and the drafters and serves jobs
//! from a bounded first-come-first-served queue, up to one per slot at a time: every step drafts a
//! tree for each running job and verifies all of them in one batch. Handlers never touch the
//! model's context; they send a job and read its events. A client that leaves (its receiver
//! dropped), a stop string or the job's deadline ends a generation at the next token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::draft::{count_by_source, Budget, Combined, ContextDrafter, IndexDrafter, NgramDrafter, Proposer, Ranked, RecycleDrafter, SourceStats};
use crate::generate::{Drafter, GenerateOptions, Generation, StopReason};
use crate::verify::session::SlotStep;
use crate::index::Index;
use crate::model::{Model, TextStream};
use crate::server::metrics::Metrics;
use crate::verify::{Session, SessionOptions};

/// What a request asks the worker to do.
pub struct Job {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    /// Generation ends before any of these strings; none of it is returned.
    pub stop: Vec<String>,
    pub deadline: Instant,
    pub events: mpsc::UnboundedSender<Event>,
}

/// How a generation ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End of generation or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The deadline passed.
    Timeout,
}

#[derive(Debug)]
pub enum Event {
    /// Text that is final (a stop string can no longer cut it).
    Text(String),
    Done { finish: Finish, prompt_tokens: usize, completion_tokens: usize },
    Failed(String),
}

/// Which drafters the worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftSources {
    pub context: bool,
    pub ngram: bool,
    pub index: bool,
    pub recycle: bool,
}

impl DraftSources {
    pub fn all() -> Self {
        DraftSources { context: true, ngram: true, index: true, recycle: true }
    }

    pub fn none() -> Self {
        DraftSources { context: false, ngram: false, index: false, recycle: false }
    }

    /// What runs when `--draft` is not given: the running context's copies and n-grams. In one
    /// interleaved run after another (README, "Choosing the default drafters"), adding the index
    /// and the recycling matrix to these two was slower on code (their first tokens, accepted less
    /// often than the context's, displace the context's in small trees) and no faster on chat or
    /// copy; they stay one `--draft all` away.
    pub fn default_set() -> Self {
        DraftSources { context: true, ngram: true, index: false, recycle: false }
    }

    /// From `--draft` names: `default`, `all`, `none` or single sources (no names: `default`); an
    /// unknown name is an error.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(DraftSources::default_set());
        }
        let mut sources = DraftSources::none();
        for name in names {
            match name.as_ref() {
                "all" => sources = DraftSources::all(),
                "default" => {
                    let d = DraftSources::default_set();
                    (sources.context, sources.ngram) = (sources.context || d.context, sources.ngram || d.ngram);
                }
                "context" => sources.context = true,
                "ngram" => sources.ngram = true,
                "index" => sources.index = true,
                "recycle" => sources.recycle = true,
                "none" => {}
                other => return Err(format!("unknown draft source {other:?}: use context, ngram, index, recycle, default, all or none")),
            }
        }
        Ok(sources)
    }

    /// The chosen drafters that need neither the model nor a learnt state, in the order every
    /// caller merges them: context, ngram, then index (where there is one).
    pub fn context_and_index_proposers<'i>(&self, index: Option<&'i Index>) -> Vec<Box<dyn Proposer + 'i>> {
        let mut proposers: Vec<Box<dyn Proposer + 'i>> = Vec::new();
        if self.context {
            proposers.push(Box::new(ContextDrafter::default()));
        }
        if self.ngram {
            proposers.push(Box::new(NgramDrafter::default()));
        }
        if let (true, Some(ix)) = (self.index, index) {
            proposers.push(Box::new(IndexDrafter::new(ix)));
        }
        proposers
    }
}

/// Queue handle shared by the handlers.
#[derive(Clone)]
pub struct Queue {
    jobs: mpsc::Sender<Job>,
    pub waiting: Arc<AtomicU64>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    /// The worker thread has ended: nothing will be generated again.
    Stopped,
}

impl Queue {
    /// A queue of `capacity` waiting jobs and the receiving end a worker takes them from.
    pub fn new(capacity: usize) -> (Queue, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel::<Job>(capacity.max(1));
        (Queue { jobs, waiting: Arc::new(AtomicU64::new(0)) }, rx)
    }

    /// Queue a job, or say why not.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Refused::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Stopped),
        }
    }

    /// Whether the worker thread still takes jobs (`/health` tells the truth with it).
    pub fn is_alive(&self) -> bool {
        !self.jobs.is_closed()
    }
}

/// Every running job fails with `e` (its client is told; it is over).
fn fail_all(running: &mut [Running], e: &str) {
    for r in running {
        let _ = r.events.send(Event::Failed(e.to_string()));
        (r.generation, r.done) = (None, true);
    }
}

/// What a panic carried, as text.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

/// Holds back the end of the text while it could still be the start of a stop string.
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> Self {
        StopFilter { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Add text; returns what can be released and whether a stop string was found (the text
    /// before it is released, the rest dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // keep the longest tail that is a prefix of some stop string
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len().min(self.held.len() + 1)).rev().filter(move |&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The environment variable that makes one generation step panic (a test of containment).
pub const FAULT_PANIC_AT_STEP: &str = "IBID_FAULT_PANIC_AT_STEP";

pub struct WorkerConfig {
    /// The shared session: one slot per job generated at once, `n_ctx` cells for all of them and
    /// the prompt cache.
    pub session: SessionOptions,
    /// Tokens one job may hold (prompt, output and a draft tree).
    pub request_ctx: usize,
    pub sources: DraftSources,
    /// Largest tree per step; the budget picks the size up to this.
    pub max_budget: usize,
    pub queue: usize,
}

/// Start the worker thread. It stops (saving what the drafters learnt) when every `Queue` is
/// dropped; join the handle to wait for that.
pub fn spawn(
    model: Arc<Model>,
    index: Option<Arc<Index>>,
    recycle: Option<RecycleDrafter>,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
) -> crate::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (queue, mut rx) = Queue::new(config.queue);
    let waiting = queue.waiting.clone();
    // The thread makes the context and says whether it could, so that spawn fails, not the thread.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<crate::Result<()>>(1);
    let handle = std::thread::Builder::new()
        .name("ibid-generate".into())
        .spawn(move || {
            // One drafter for the server's life: what it learns (acceptance per source, the
            // recycling matrix) carries over from request to request, and from earlier runs.
            let mut proposers = config.sources.context_and_index_proposers(index.as_deref());
            if let (true, Some(r)) = (config.sources.recycle, recycle) {
                proposers.push(Box::new(r));
            }
            let drafting = !proposers.is_empty();
            let mut drafter = Combined::new(proposers);
            // This machine's cost curve, measured before the first request at first use.
            let prepared = Session::new(&model, config.session.clone()).and_then(|mut session| {
                let curve = if drafting { Some(crate::calibrate::for_session(&mut session, true)?.0) } else { None };
                Ok((session, curve))
            });
            let (mut session, curve) = match prepared {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            if drafting {
                if let Err(e) = drafter.remember(crate::calibrate::learnt_path(model.path()), model.path()) {
                    tracing::warn!("{e}; learning the sources' acceptance afresh");
                }
            }
            let slots = config.session.slots as usize;
            let mut budget = Budget::for_slots(curve.as_ref(), config.max_budget, slots);
            let max_paths = config.session.max_sequences as usize;
            let mut running: Vec<Running> = Vec::new();
            let mut open = true;
            // A fault to inject, for the test that a panic in a step is contained: the step with
            // this number (from 1) panics. Read once; unset, it costs nothing.
            let panic_at: Option<u64> = std::env::var(FAULT_PANIC_AT_STEP).ok().and_then(|v| v.parse().ok());
            let mut steps = 0u64;
            while open || !running.is_empty() {
                // Fill free slots from the queue; wait for a job only when nothing runs.
                while open && running.len() < slots {
                    let job = if running.is_empty() {
                        rx.blocking_recv()
                    } else {
                        match rx.try_recv() {
                            Ok(job) => Some(job),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        }
                    };
                    let Some(job) = job else {
                        open = false;
                        break;
                    };
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    let Some(slot) = session.free_slot() else {
                        let _ = job.events.send(Event::Failed("internal error: no free slot".into()));
                        continue;
                    };
                    let events = job.events.clone();
                    let sources = drafter.stats.len();
                    // A panic while starting one job fails that job; the cache is emptied (the
                    // running jobs' cells with it, so they fail too) and the worker goes on.
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start_job(&mut session, slot, job, sources, &metrics))) {
                        Ok(Some(r)) => running.push(r),
                        Ok(None) => {}
                        Err(panic) => {
                            let e = format!("internal error: {}", panic_text(&*panic));
                            tracing::error!("{e} while starting a job; the cache is emptied");
                            let _ = events.send(Event::Failed(e.clone()));
                            fail_all(&mut running, &e);
                            session.reset();
                            running.clear();
                        }
                    }
                }
                if running.is_empty() {
                    continue;
                }
                let started = Instant::now();
                // A panic in a step fails the jobs of that step, not the server: the cache (whose
                // state the panic may have left half-updated) is emptied and the worker goes on.
                steps += 1;
                let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if panic_at == Some(steps) {
                        panic!("a fault injected at step {steps} ({FAULT_PANIC_AT_STEP})");
                    }
                    step(&model, &mut session, &mut drafter, &mut budget, &mut running, config.request_ctx, max_paths)
                }));
                let stepped = stepped.unwrap_or_else(|panic| {
                    let e = format!("internal error: {}", panic_text(&*panic));
                    tracing::error!("{e} in a generation step; its jobs fail and the cache is emptied");
                    session.reset();
                    for r in &mut running {
                        r.released = true;
                    }
                    Err(crate::Error::Invalid(e))
                });
                match stepped {
                    Ok(0) => {}
                    Ok(verified) => {
                        metrics.decode_seconds.inc_by(started.elapsed().as_secs_f64());
                        metrics.verify_steps.inc();
                        metrics.batch_sequences.inc_by(verified as u64);
                    }
                    Err(e) => fail_all(&mut running, &e.to_string()),
                }
                for r in running.iter().filter(|r| r.done && !r.released) {
                    if let Err(e) = session.release(r.slot) {
                        tracing::warn!("cannot release slot {}: {e}; emptying the cache", r.slot);
                        session.reset();
                    }
                }
                let (finished, still): (Vec<Running>, Vec<Running>) = running.into_iter().partition(|r| r.done);
                running = still;
                let names = drafter.source_names();
                for r in finished {
                    r.finish(&names, &metrics);
                }
            }
            if let Err(e) = drafter.finish() {
                tracing::warn!("cannot save what the drafters learnt: {e}");
            }
            if drafting {
                if let Err(e) = crate::calibrate::keep_observed(model.path(), config.session.threads, budget.observed_extra()) {
                    tracing::warn!("cannot keep what steps cost: {e}");
                }
            }
        })
        .map_err(|e| crate::Error::Invalid(format!("cannot start the generation thread: {e}")))?;
    ready_rx
        .recv()
        .map_err(|_| crate::Error::Invalid("the generation thread stopped before it started".into()))??;
    Ok((queue, handle))
}

/// A job in a slot of the session.
struct Running {
    slot: usize,
    generation: Option<Generation>,
    text: TextStream,
    stop: StopFilter,
    events: mpsc::UnboundedSender<Event>,
    deadline: Instant,
    stopped: bool,
    timed_out: bool,
    /// Its draft and accepted tokens per source.
    sources: Vec<SourceStats>,
    /// Over, by its end or by an error already sent.
    done: bool,
    /// Its slot is free already (the cache was emptied).
    released: bool,
}

/// Prefill `job`'s prompt into `slot`, unless it no longer needs an answer.
fn start_job(session: &mut Session<'_>, slot: usize, job: Job, sources: usize, metrics: &Metrics) -> Option<Running> {
    if job.events.is_closed() {
        metrics.cancelled.inc();
        return None;
    }
    if Instant::now() >= job.deadline {
        let _ = job.events.send(Event::Failed("the request timed out while queued".into()));
        metrics.timeouts.inc();
        return None;
    }
    if job.options.max_tokens == 0 {
        let _ = job.events.send(Event::Failed("max_tokens must be at least 1".into()));
        return None;
    }
    let started = Instant::now();
    let generation = session.prefill_slot(slot, &job.prompt).and_then(|cached| {
        metrics.prompt_tokens_cached.inc_by(cached as u64);
        Generation::new(job.prompt.len(), &job.options, started.elapsed().as_secs_f64())
    });
    match generation {
        Ok(generation) => Some(Running {
            slot,
            done: false,
            released: false,
            generation: Some(generation),
            text: TextStream::default(),
            stop: StopFilter::new(job.stop),
            events: job.events,
            deadline: job.deadline,
            stopped: false,
            timed_out: false,
            sources: vec![SourceStats::default(); sources],
        }),
        Err(e) => {
            let _ = job.events.send(Event::Failed(e.to_string()));
            None
        }
    }
}

/// One verification step for every running job: draft each tree, cut them together by the
/// batch's cost, verify all in one batch, and pass each job its tokens. Returns how many jobs the
/// batch verified.
fn step(
    model: &Model,
    session: &mut Session<'_>,
    drafter: &mut Combined<'_>,
    budget: &mut Budget,
    running: &mut [Running],
    request_ctx: usize,
    max_paths: usize,
) -> crate::Result<usize> {
    let started = Instant::now();
    // Each job's most draft nodes; a job whose context is full ends with an error, the others go on.
    let mut live: Vec<&mut Running> = Vec::with_capacity(running.len());
    let mut ranked: Vec<Ranked> = Vec::with_capacity(running.len());
    for r in running.iter_mut() {
        let generation = r.generation.as_ref().expect("a running job has a generation");
        match generation.budget(session.slot_len(r.slot), request_ctx) {
            Ok(most) => {
                let most = most.min(budget.max());
                let mut tree = if most > 0 { drafter.rank(&session.slot_tokens(r.slot), most) } else { Ranked::default() };
                tree.limit_leaves(max_paths);
                ranked.push(tree);
                live.push(r);
            }
            Err(e) => {
                let _ = r.events.send(Event::Failed(e.to_string()));
                (r.generation, r.done) = (None, true);
            }
        }
    }
    let mut running = live;
    if running.is_empty() {
        return Ok(0);
    }
    let path_ps: Vec<&[f64]> = ranked.iter().map(|r| r.path_p.as_slice()).collect();
    let cuts = budget.choose_joint(&path_ps);
    for (r, keep) in ranked.iter_mut().zip(cuts) {
        r.truncate(keep);
    }
    let pendings: Vec<u32> = running.iter().map(|r| session.slot_pending(r.slot).expect("prefilled")).collect();
    let mut work: Vec<SlotStep<'_>> = running
        .iter_mut()
        .zip(&ranked)
        .map(|(r, k)| SlotStep { slot: r.slot, tree: &k.tree, chooser: &mut r.generation.as_mut().expect("running").chooser })
        .collect();
    let wants_logits = drafter.wants_logits();
    let drafted = started.elapsed();
    let mut observing = std::time::Duration::ZERO;
    let outcomes = session.step_slots(&mut work, |i, node, logits| {
        let t = Instant::now();
        if wants_logits {
            drafter.observe_logits(node.map_or(pendings[i], |n| ranked[i].tree.token(n)), logits);
        }
        observing += t.elapsed();
    })?;
    drop(work);
    let verified = started.elapsed();
    let rows: usize = ranked.iter().map(|k| 1 + k.tree.len()).sum();
    budget.observe(rows, (verified - drafted).as_secs_f64());
    tracing::debug!(
        slots = running.len(),
        rows,
        tokens = outcomes.iter().map(|o| o.emitted.len()).sum::<usize>(),
        draft_ms = drafted.as_secs_f64() * 1e3,
        verify_ms = (verified - drafted).as_secs_f64() * 1e3,
        observe_ms = observing.as_secs_f64() * 1e3,
        "step"
    );
    for ((r, k), outcome) in running.iter_mut().zip(&ranked).zip(&outcomes) {
        drafter.observe_ranked(k, outcome);
        budget.observe_tree(k.tree.len(), outcome.accepted.len());
        count_by_source(&k.tree, outcome, &mut r.sources);
        let Running { generation, text, stop, events, deadline, stopped, timed_out, done, .. } = &mut **r;
        let generation = generation.as_mut().expect("running");
        *done = generation.absorb(model, k.tree.len(), outcome, |t| {
            let (out, hit) = stop.push(&text.push(model, t));
            if !out.is_empty() && events.send(Event::Text(out)).is_err() {
                return false; // the client left
            }
            if hit {
                *stopped = true;
                return false;
            }
            if Instant::now() >= *deadline {
                *timed_out = true;
                return false;
            }
            true
        });
    }
    Ok(running.len())
}

impl Running {
    /// The job is over: the rest of its text, its metrics and its `Done` event (unless it failed).
    fn finish(mut self, source_names: &[String], metrics: &Metrics) {
        let Some(generation) = self.generation.take() else { return }; // failed; the error was sent
        let report = generation.finish();
        if !self.stopped {
            let rest = self.stop.push(&self.text.finish()).0 + &self.stop.finish();
            if !rest.is_empty() {
                let _ = self.events.send(Event::Text(rest));
            }
        }
        let finish = match report.stop {
            StopReason::MaxTokens => Finish::Length,
            StopReason::EndOfGeneration => Finish::Stop,
            StopReason::Caller if self.timed_out => Finish::Timeout,
            StopReason::Caller => Finish::Stop,
        };
        if self.events.is_closed() {
            metrics.cancelled.inc();
        }
        if self.timed_out {
            metrics.timeouts.inc();
        }
        let per_source: Vec<(String, u64, u64)> =
            source_names.iter().zip(&self.sources).map(|(name, s)| (name.clone(), s.drafted, s.accepted)).collect();
        metrics.record_generation(&report, &per_source);
        let _ = self.events.send(Event::Done { finish, prompt_tokens: report.prompt_tokens, completion_tokens: report.tokens.len() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_names_choose_sources() {
        let parse = |names: &[&str]| DraftSources::from_names(names).unwrap();
        assert_eq!(parse(&[]), DraftSources::default_set());
        assert_eq!(parse(&["default"]), DraftSources { context: true, ngram: true, index: false, recycle: false });
        assert_eq!(parse(&["default", "index"]), DraftSources { context: true, ngram: true, index: true, recycle: false });
        assert_eq!(parse(&["all"]), DraftSources::all());
        assert_eq!(parse(&["none"]), DraftSources::none());
        assert_eq!(parse(&["recycle"]), DraftSources { context: false, ngram: false, index: false, recycle: true });
        assert!(DraftSources::from_names(&["indx"]).unwrap_err().contains("unknown draft source"));
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = f.push(p);
            out += &o;
            if hit {
                return (out, true);
            }
        }
        out += &f.finish();
        (out, false)
    }

    #[test]
    fn stop_strings_cut_across_pieces_and_hold_back_prefixes() {
        assert_eq!(run(&["\n\n"], &["a", "b\n", "\nc"]), ("ab".into(), true));
        assert_eq!(run(&["END"], &["xE", "N", "y"]), ("xENy".into(), false));
        assert_eq!(run(&["END", "x"], &["abx"]), ("ab".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        let mut f = StopFilter::new(vec!["ab".into()]);
        assert_eq!(f.push("xa"), ("x".into(), false), "the 'a' could start the stop string");
        assert_eq!(f.push("c"), ("ac".into(), false));
        // multi-byte: prefixes are cut at character boundaries
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }
}
