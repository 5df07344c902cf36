//! Server counters in Prometheus' text format (`GET /metrics`).

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

use crate::engine::GenerateReport;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounter,
    pub prompt_tokens_cached: IntCounter,
    pub completion_tokens: IntCounter,
    pub decode_seconds: prometheus::Counter,
    pub verify_steps: IntCounter,
    pub batch_sequences: IntCounter,
    pub last_tokens_per_second: Gauge,
    pub draft_tokens: IntCounterVec,
    pub accepted_tokens: IntCounterVec,
    pub cancelled: IntCounter,
    pub timeouts: IntCounter,
    pub queue_depth: prometheus::IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("ibid".into()), None).expect("valid prefix");
        let requests =
            IntCounterVec::new(Opts::new("requests_total", "HTTP requests by route and status"), &["route", "status"]).expect("valid");
        let prompt_tokens = IntCounter::new("prompt_tokens_total", "Prompt tokens processed").expect("valid");
        let prompt_tokens_cached =
            IntCounter::new("prompt_tokens_cached_total", "Prompt tokens found in the prompt cache (not decoded again)").expect("valid");
        let completion_tokens = IntCounter::new("completion_tokens_total", "Tokens generated").expect("valid");
        let decode_seconds =
            prometheus::Counter::new("decode_seconds_total", "Time spent in verification batches (prompts excluded)").expect("valid");
        let verify_steps =
            IntCounter::new("verify_steps_total", "Verification batches (one per step, shared by the running generations)").expect("valid");
        let batch_sequences =
            IntCounter::new("batch_sequences_total", "Generations verified, summed over batches (several share one batch)").expect("valid");
        let last_tokens_per_second = Gauge::new("last_tokens_per_second", "Decode speed of the last generation").expect("valid");
        let draft_tokens =
            IntCounterVec::new(Opts::new("draft_tokens_total", "Draft tokens verified, by source"), &["source"]).expect("valid");
        let accepted_tokens =
            IntCounterVec::new(Opts::new("accepted_tokens_total", "Draft tokens accepted, by source"), &["source"]).expect("valid");
        let cancelled = IntCounter::new("cancelled_total", "Generations ended because the client left").expect("valid");
        let timeouts = IntCounter::new("timeouts_total", "Requests that ran past their deadline").expect("valid");
        let queue_depth = prometheus::IntGauge::new("queue_depth", "Generation requests waiting").expect("valid");
        for c in [&prompt_tokens, &prompt_tokens_cached, &completion_tokens, &verify_steps, &batch_sequences, &cancelled, &timeouts] {
            registry.register(Box::new(c.clone())).expect("unique");
        }
        registry.register(Box::new(requests.clone())).expect("unique");
        registry.register(Box::new(decode_seconds.clone())).expect("unique");
        registry.register(Box::new(last_tokens_per_second.clone())).expect("unique");
        registry.register(Box::new(draft_tokens.clone())).expect("unique");
        registry.register(Box::new(accepted_tokens.clone())).expect("unique");
        registry.register(Box::new(queue_depth.clone())).expect("unique");
        Metrics {
            registry,
            requests,
            prompt_tokens,
            prompt_tokens_cached,
            completion_tokens,
            decode_seconds,
            verify_steps,
            batch_sequences,
            last_tokens_per_second,
            draft_tokens,
            accepted_tokens,
            cancelled,
            timeouts,
            queue_depth,
        }
    }

    /// One generation: its report and, per draft source, (name, drafted, accepted) tokens. Decode
    /// time and steps are counted by the worker per batch, which several generations share.
    pub fn record_generation(&self, report: &GenerateReport, sources: &[(String, u64, u64)]) {
        self.prompt_tokens.inc_by(report.prompt_tokens as u64);
        self.completion_tokens.inc_by(report.tokens.len() as u64);
        self.last_tokens_per_second.set(report.tokens_per_s());
        for (name, drafted, accepted) in sources {
            self.draft_tokens.with_label_values(&[name]).inc_by(*drafted);
            self.accepted_tokens.with_label_values(&[name]).inc_by(*accepted);
        }
    }

    /// The text exposition, with derived gauges (tokens/s overall, mean tokens per step).
    pub fn render(&self, queue_depth: u64) -> String {
        self.queue_depth.set(queue_depth as i64);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        let mut text = String::from_utf8(out).expect("prometheus text is UTF-8");
        let tokens = self.completion_tokens.get() as f64;
        let secs = self.decode_seconds.get();
        // Per generation's step: a batch that verifies several generations is a step of each.
        let steps = self.batch_sequences.get() as f64;
        text += &format!(
            "# HELP ibid_tokens_per_second Tokens generated per second of decoding, since start\n# TYPE ibid_tokens_per_second gauge\nibid_tokens_per_second {}\n",
            if secs > 0.0 { tokens / secs } else { 0.0 }
        );
        text += &format!(
            "# HELP ibid_tokens_per_step Mean tokens a generation gains per verification step, since start\n# TYPE ibid_tokens_per_step gauge\nibid_tokens_per_step {}\n",
            if steps > 0.0 { tokens / steps } else { 0.0 }
        );
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
