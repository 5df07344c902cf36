//! The generation worker: one thread owns the llama.cpp session and the drafters and serves jobs
//! from a bounded first-come-first-served queue, one at a time. Handlers never touch the model's
//! context; they send a job and read its events. A client that leaves (its receiver dropped), a
//! stop string or the job's deadline ends a generation at the next token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::draft::{Budget, Combined, ContextDrafter, IndexDrafter, Proposer, RecycleDrafter};
use crate::generate::{generate, GenerateOptions, StopReason};
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
    pub index: bool,
    pub recycle: bool,
}

impl DraftSources {
    pub fn all() -> Self {
        DraftSources { context: true, index: true, recycle: true }
    }

    pub fn none() -> Self {
        DraftSources { context: false, index: false, recycle: false }
    }
}

/// Queue handle shared by the handlers.
#[derive(Clone)]
pub struct Queue {
    jobs: mpsc::Sender<Job>,
    pub waiting: Arc<AtomicU64>,
}

impl Queue {
    /// Queue a job, or give it back when the queue is full (or the worker has stopped).
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => Err(job),
        }
    }
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

pub struct WorkerConfig {
    pub session: SessionOptions,
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
    let (tx, mut rx) = mpsc::channel::<Job>(config.queue.max(1));
    let waiting = Arc::new(AtomicU64::new(0));
    let queue = Queue { jobs: tx, waiting: waiting.clone() };
    // The thread makes the context and says whether it could, so that spawn fails, not the thread.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<crate::Result<()>>(1);
    let handle = std::thread::Builder::new()
        .name("ibid-generate".into())
        .spawn(move || {
            let mut session = match Session::new(&model, config.session.clone()) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // One drafter for the server's life: what it learns (acceptance per source, the
            // recycling matrix) carries over from request to request.
            let curve = crate::calibrate::load_cached(model.path(), config.session.threads);
            let mut proposers: Vec<Box<dyn Proposer + '_>> = Vec::new();
            if config.sources.context {
                proposers.push(Box::new(ContextDrafter::default()));
            }
            if let (true, Some(ix)) = (config.sources.index, &index) {
                proposers.push(Box::new(IndexDrafter::new(ix)));
            }
            if let (true, Some(r)) = (config.sources.recycle, recycle) {
                proposers.push(Box::new(r));
            }
            let mut drafter = Combined::new(proposers);
            if config.max_budget > 0 {
                drafter.budget = Some(Budget::new(curve.as_ref(), config.max_budget));
            }
            while let Some(job) = rx.blocking_recv() {
                waiting.fetch_sub(1, Ordering::Relaxed);
                if job.events.is_closed() {
                    metrics.cancelled.inc();
                    continue;
                }
                if Instant::now() >= job.deadline {
                    let _ = job.events.send(Event::Failed("the request timed out while queued".into()));
                    metrics.timeouts.inc();
                    continue;
                }
                drafter.budgets.clear();
                run_job(&model, &mut session, &mut drafter, job, &metrics);
            }
            if let Err(e) = drafter.finish() {
                tracing::warn!("cannot save the recycling matrix: {e}");
            }
        })
        .map_err(|e| crate::Error::Invalid(format!("cannot start the generation thread: {e}")))?;
    ready_rx
        .recv()
        .map_err(|_| crate::Error::Invalid("the generation thread stopped before it started".into()))??;
    Ok((queue, handle))
}

fn run_job(model: &Model, session: &mut Session<'_>, drafter: &mut Combined<'_>, job: Job, metrics: &Metrics) {
    let mut text = TextStream::default();
    let mut stop = StopFilter::new(job.stop);
    let mut timed_out = false;
    let mut stopped = false;
    let events = job.events;
    let before = drafter.stats.clone();
    let result = generate(session, &job.prompt, drafter, &job.options, |t| {
        let (out, hit) = stop.push(&text.push(model, t));
        if !out.is_empty() && events.send(Event::Text(out)).is_err() {
            return false; // the client left
        }
        if hit {
            stopped = true;
            return false;
        }
        if Instant::now() >= job.deadline {
            timed_out = true;
            return false;
        }
        true
    });
    match result {
        Ok(report) => {
            if !stopped {
                let rest = stop.push(&text.finish()).0 + &stop.finish();
                if !rest.is_empty() {
                    let _ = events.send(Event::Text(rest));
                }
            }
            let finish = match report.stop {
                StopReason::MaxTokens => Finish::Length,
                StopReason::EndOfGeneration => Finish::Stop,
                StopReason::Caller if timed_out => Finish::Timeout,
                StopReason::Caller => Finish::Stop,
            };
            if events.is_closed() {
                metrics.cancelled.inc();
            }
            if timed_out {
                metrics.timeouts.inc();
            }
            let per_source: Vec<(String, u64, u64)> = drafter
                .source_names()
                .into_iter()
                .zip(drafter.stats.iter().zip(&before))
                .map(|(name, (now, then))| (name, now.drafted - then.drafted, now.accepted - then.accepted))
                .collect();
            metrics.record_generation(&report, &per_source);
            let _ = events.send(Event::Done {
                finish,
                prompt_tokens: report.prompt_tokens,
                completion_tokens: report.tokens.len(),
            });
        }
        Err(e) => {
            let _ = events.send(Event::Failed(e.to_string()));
        }
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
}
