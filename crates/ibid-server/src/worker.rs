//! The generation worker: one thread owns the llama.cpp session and the drafters and serves jobs
//! from a bounded first-come-first-served queue, up to one per slot at a time: every step drafts a
//! tree for each running job and verifies all of them in one batch. Handlers never touch the
//! model's context; they send a job and read its events. A client that leaves (its receiver
//! dropped), a stop string or the job's deadline ends a generation at the next token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::draft::{count_by_source, MergingDrafter, SourceSet, SourceStats};
use crate::engine::{Engine, GenerateOptions, Generation, Sizing, StopReason, Turn};
use crate::error::Error;
use crate::index::Index;
use crate::metrics::Metrics;
use crate::model::{Model, TextStream};
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
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(JobError),
}

/// Why a job failed, of a kind the HTTP layer turns into a status in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub kind: JobErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobErrorKind {
    /// The deadline passed before the job could start.
    TimedOut,
    /// The request cannot be generated as asked.
    Rejected,
    /// The generation failed on the server's side (llama.cpp, a contained panic, ...).
    Failed,
}

impl JobError {
    pub fn new(kind: JobErrorKind, message: impl Into<String>) -> Self {
        JobError { kind, message: message.into() }
    }
}

impl From<&Error> for JobError {
    /// The request's fault (a prompt or parameter the model cannot take, a context too small for
    /// it) or the server's (llama.cpp, a session used out of order, anything else).
    fn from(e: &Error) -> Self {
        let kind = match e {
            Error::Prompt(_) | Error::Argument(_) | Error::ContextFull { .. } => JobErrorKind::Rejected,
            Error::Stopped(_) => JobErrorKind::TimedOut,
            _ => JobErrorKind::Failed,
        };
        JobError::new(kind, e.to_string())
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
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
fn fail_all(running: &mut [Running], e: &JobError) {
    for r in running {
        let _ = r.events.send(Event::Failed(e.clone()));
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
    pub sources: SourceSet,
    /// Save the token-recycling matrix when the worker stops.
    pub save_recycle: bool,
    /// Largest tree per step; the budget picks the size up to this.
    pub max_budget: usize,
    pub queue: usize,
}

/// Start the worker thread. It stops (saving what the drafters learnt) when every `Queue` is
/// dropped; join the handle to wait for that.
pub fn spawn(
    model: Arc<Model>,
    index: Option<Arc<Index>>,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
) -> crate::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (queue, rx) = Queue::new(config.queue);
    let waiting = queue.waiting.clone();
    // The thread makes the context and says whether it could, so that spawn fails, not the thread.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<crate::Result<()>>(1);
    let handle = std::thread::Builder::new()
        .name("ibid-generate".into())
        .spawn(move || {
            // One engine for the server's life: what the drafters learn (acceptance per source,
            // the recycling matrix) carries over from request to request, and from earlier runs.
            let opened = config.sources.open(&model, index.as_deref(), config.save_recycle);
            for w in &opened.warnings {
                tracing::warn!("{w}");
            }
            let mut session = match Session::new(&model, config.session) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let slots = config.session.slots as usize;
            // This machine's cost curve, measured before the first request at first use.
            let sizing = Sizing::Auto { max: config.max_budget, slots, refine: true };
            let mut engine = match Engine::with_sources(&mut session, opened.sources, sizing) {
                Ok((engine, _, problems)) => {
                    for p in problems {
                        tracing::warn!("{p}");
                    }
                    let _ = ready_tx.send(Ok(()));
                    engine
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            serve_jobs(&mut engine, rx, &waiting, &config, &metrics);
            for p in engine.finish() {
                tracing::warn!("{p}");
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the generation thread: {e}")))?;
    ready_rx.recv().map_err(|_| Error::Internal("the generation thread stopped before it started".into()))??;
    Ok((queue, handle))
}

/// Take jobs from the queue into free slots and step them until the queue is closed and every
/// job is over.
fn serve_jobs(
    engine: &mut Engine<'_, '_, MergingDrafter<'_>>,
    mut rx: mpsc::Receiver<Job>,
    waiting: &AtomicU64,
    config: &WorkerConfig,
    metrics: &Metrics,
) {
    let slots = config.session.slots as usize;
    let mut running: Vec<Running> = Vec::new();
    let mut open = true;
    // A fault to inject, for the test that a panic in a step is contained: the step with this
    // number (from 1) panics. Read once; unset, it costs nothing.
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
            let Some(slot) = engine.session().free_slot() else {
                let _ = job.events.send(Event::Failed(JobError::new(JobErrorKind::Failed, "internal error: no free slot")));
                continue;
            };
            let events = job.events.clone();
            let sources = engine.drafter().stats.len();
            // A panic while starting one job fails that job; the cache is emptied (the running
            // jobs' cells with it, so they fail too) and the worker goes on.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start_job(engine, slot, job, sources, metrics))) {
                Ok(Some(r)) => running.push(r),
                Ok(None) => {}
                Err(panic) => {
                    let e = JobError::new(JobErrorKind::Failed, format!("internal error: {}", panic_text(&*panic)));
                    tracing::error!("{e} while starting a job; the cache is emptied");
                    let _ = events.send(Event::Failed(e.clone()));
                    fail_all(&mut running, &e);
                    engine.session().reset();
                    running.clear();
                }
            }
        }
        if running.is_empty() {
            continue;
        }
        let started = Instant::now();
        // A panic in a step fails the jobs of that step, not the server: the cache (whose state
        // the panic may have left half-updated) is emptied and the worker goes on.
        steps += 1;
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if panic_at == Some(steps) {
                panic!("a fault injected at step {steps} ({FAULT_PANIC_AT_STEP})");
            }
            step(engine, &mut running, config.request_ctx)
        }));
        let stepped = stepped.unwrap_or_else(|panic| {
            let e = format!("internal error: {}", panic_text(&*panic));
            tracing::error!("{e} in a generation step; its jobs fail and the cache is emptied");
            engine.session().reset();
            for r in &mut running {
                r.released = true;
            }
            Err(Error::Internal(e))
        });
        match stepped {
            Ok(0) => {}
            Ok(verified) => {
                metrics.decode_seconds.inc_by(started.elapsed().as_secs_f64());
                metrics.verify_steps.inc();
                metrics.batch_sequences.inc_by(verified as u64);
            }
            // A step that fails fails every request in it: the server's fault, whatever the error.
            Err(e) => fail_all(&mut running, &JobError::new(JobErrorKind::Failed, e.to_string())),
        }
        for r in running.iter().filter(|r| r.done && !r.released) {
            if let Err(e) = engine.session().release(r.slot) {
                tracing::warn!("cannot release slot {}: {e}; emptying the cache", r.slot);
                engine.session().reset();
            }
        }
        let (finished, still): (Vec<Running>, Vec<Running>) = running.into_iter().partition(|r| r.done);
        running = still;
        let names = engine.drafter().source_names();
        for r in finished {
            r.finish(&names, metrics);
        }
    }
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
fn start_job(engine: &mut Engine<'_, '_, MergingDrafter<'_>>, slot: usize, job: Job, sources: usize, metrics: &Metrics) -> Option<Running> {
    if job.events.is_closed() {
        metrics.cancelled.inc();
        return None;
    }
    if Instant::now() >= job.deadline {
        let _ = job.events.send(Event::Failed(JobError::new(JobErrorKind::TimedOut, "the request timed out while queued")));
        metrics.timeouts.inc();
        return None;
    }
    if job.options.max_tokens == 0 {
        let _ = job.events.send(Event::Failed(JobError::new(JobErrorKind::Rejected, "max_tokens must be at least 1")));
        return None;
    }
    match engine.start(slot, &job.prompt, &job.options) {
        Ok((generation, cached)) => {
            metrics.prompt_tokens_cached.inc_by(cached as u64);
            Some(Running {
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
            })
        }
        Err(e) => {
            let _ = job.events.send(Event::Failed(JobError::from(&e)));
            None
        }
    }
}

/// One engine step for every running job, then each job's tokens: streamed, cut at a stop
/// string, ended at the deadline or when its client left. Returns how many jobs the batch
/// verified; a job whose context is full fails alone.
fn step(engine: &mut Engine<'_, '_, MergingDrafter<'_>>, running: &mut [Running], request_ctx: usize) -> crate::Result<usize> {
    let mut turns: Vec<Turn<'_>> = running
        .iter_mut()
        .map(|r| Turn { slot: r.slot, generation: r.generation.as_mut().expect("a running job has a generation") })
        .collect();
    let results = engine.step(&mut turns, request_ctx)?;
    drop(turns);
    let model = engine.session().model();
    let mut verified = 0;
    for (r, result) in running.iter_mut().zip(results) {
        let v = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = r.events.send(Event::Failed(JobError::from(&e)));
                (r.generation, r.done) = (None, true);
                continue;
            }
        };
        verified += 1;
        count_by_source(&v.tree, &v.outcome, &mut r.sources);
        let Running { generation, text, stop, events, deadline, stopped, timed_out, done, .. } = r;
        let generation = generation.as_mut().expect("running");
        *done = generation.absorb(model, v.tree.len(), &v.outcome, |t| {
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
    Ok(verified)
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

    /// The request's errors are 400s, the server's 500s, a deadline 503 (`openai::job_status`).
    #[test]
    fn job_errors_say_whose_fault() {
        let kind = |e: Error| JobError::from(&e).kind;
        assert_eq!(kind(Error::Prompt("the prompt is empty".into())), JobErrorKind::Rejected);
        assert_eq!(kind(Error::Argument("top_p must be in (0, 1]".into())), JobErrorKind::Rejected);
        assert_eq!(kind(Error::ContextFull { n_ctx: 8, generated: None }), JobErrorKind::Rejected);
        assert_eq!(kind(Error::Stopped("the deadline passed".into())), JobErrorKind::TimedOut);
        assert_eq!(kind(Error::Session("slot 3 does not exist".into())), JobErrorKind::Failed);
        assert_eq!(kind(Error::Llama("decode failed".into())), JobErrorKind::Failed);
        assert_eq!(kind(Error::Internal("a panic".into())), JobErrorKind::Failed);
    }
}
