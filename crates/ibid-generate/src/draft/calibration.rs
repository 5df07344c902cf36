//! What each draft source's estimates turn out to be worth: the probability that a node is
//! accepted once its parent was, learnt from verification steps (and from the shadow nodes right
//! below them), remembered across runs per model.
//!
//! The budget drafts a node only when its expected gain pays for its row, so an estimate that is
//! too high costs time on every step. At a cold start (no outcomes yet) the estimate is a guess,
//! and a guess taken at face value drafted one-node trees that were accepted 45 % of the time
//! where a second row cost 1.74 tokens (code prompts at 0.62–0.82× plain). So the probability the
//! budget sees is a lower confidence bound: the posterior mean less one standard deviation of the
//! evidence behind it. It is low while little is known, and rises to the mean as outcomes come in,
//! within the run and, through the file, from earlier runs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Upper edges of the estimate bins but the last; fine near 1, where long copies live.
const SCORE_EDGES: [f64; 9] = [0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95, 0.98];
const SCORE_BINS: usize = SCORE_EDGES.len() + 1;
const DEPTH_BINS: usize = 5;
/// A source's own estimate counts as this many observations at this fraction of its value
/// (sources are optimistic until outcomes say otherwise). Each of the three levels shrinks toward
/// the one above, so a few early failures count three times: with a weight of 2, four rejected
/// first drafts cut a source to a twentieth of its estimate, below every other source, and it was
/// never drafted again for the rest of the run (HumanEval prompt 3: context 4 drafts, 1.06× plain,
/// against 1.41× with the context alone). 8 was best of 2, 4, 8 and 16 on code, copy and chat.
const PRIOR_WEIGHT: f64 = 8.0;
const PRIOR_SCALE: f64 = 0.8;
/// How many standard deviations of the evidence the bound lies below the mean (one: the true rate
/// is above it about five times in six).
const CONFIDENCE_Z: f64 = 1.0;
/// Observations of one source that a new run starts from, at most: more are scaled down on
/// loading, so that what earlier runs taught guides a cold start but the text at hand can still
/// move it within a run (a 128-token run makes 50–200 observations per source).
const REMEMBERED: f64 = 400.0;
/// The file's layout; another version is set aside and learning starts afresh.
pub const LEARNT_VERSION: u32 = 1;

/// A source's estimate as the prior of its acceptance rate: discounted (sources are optimistic
/// until outcomes say otherwise), except, for a source whose near-certain estimates are meant
/// (`sure`), the discount fades out between 0.97 and 0.999: the deep tokens of a long copy are
/// accepted nearly always, and a chain of 40 discounted by 0.8 each would never be drafted.
fn prior_of(raw: f64, sure: bool) -> f64 {
    let raw = raw.clamp(0.01, ceiling(sure));
    if sure {
        let trust = ((raw - 0.97) / (SURE_CEILING - 0.97)).clamp(0.0, 1.0);
        raw * (PRIOR_SCALE + (1.0 - PRIOR_SCALE) * trust)
    } else {
        raw * PRIOR_SCALE
    }
}

const SURE_CEILING: f64 = 0.999;

/// The highest acceptance probability a source's prior may claim.
fn ceiling(sure: bool) -> f64 {
    if sure {
        SURE_CEILING
    } else {
        0.99
    }
}

fn score_bin(raw: f64) -> usize {
    SCORE_EDGES.iter().take_while(|&&edge| raw >= edge).count()
}

pub(super) fn depth_bin(depth: usize) -> usize {
    match depth {
        0 | 1 => 0,
        2..=3 => 1,
        4..=7 => 2,
        8..=15 => 3,
        _ => 4,
    }
}

/// One source's outcomes, at two levels: per depth bin (learns fast), and per estimate bin and
/// depth bin (learns the shape). Each counts draft nodes whose parent was accepted ("reached")
/// and how many of those were accepted. Counts are reals: remembered ones are scaled down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    reached: [[f64; DEPTH_BINS]; SCORE_BINS],
    accepted: [[f64; DEPTH_BINS]; SCORE_BINS],
    source_reached: [f64; DEPTH_BINS],
    source_accepted: [f64; DEPTH_BINS],
    /// Over all reached nodes: the sum of the source's own (discounted) estimates, and the nodes
    /// accepted.
    predicted: f64,
    hits: f64,
}

impl SourceRecord {
    /// Observations recorded.
    pub fn observations(&self) -> f64 {
        self.source_reached.iter().sum()
    }

    /// The same record scaled to at most `most` observations (rates unchanged).
    fn capped(&self, most: f64) -> Self {
        let total = self.observations();
        if !(total > most) {
            return self.clone();
        }
        let k = most / total;
        let mut r = self.clone();
        for row in r.reached.iter_mut().chain(r.accepted.iter_mut()) {
            row.iter_mut().for_each(|v| *v *= k);
        }
        r.source_reached.iter_mut().chain(r.source_accepted.iter_mut()).for_each(|v| *v *= k);
        r.predicted *= k;
        r.hits *= k;
        r
    }

    /// Whether every count is a finite, non-negative number with accepted ≤ reached: a file that
    /// says otherwise is not trusted.
    fn is_sane(&self) -> bool {
        let ok = |a: f64, r: f64| a.is_finite() && r.is_finite() && a >= 0.0 && a <= r + 1e-9;
        self.reached.iter().zip(&self.accepted).all(|(r, a)| r.iter().zip(a).all(|(&r, &a)| ok(a, r)))
            && self.source_reached.iter().zip(&self.source_accepted).all(|(&r, &a)| ok(a, r))
            && ok(self.hits, self.predicted.max(self.observations()))
            && self.predicted.is_finite()
            && self.predicted >= 0.0
    }
}

/// What earlier runs learnt, per source name, as saved next to the model's cost curve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Learnt {
    pub version: u32,
    pub model_file: String,
    pub model_bytes: u64,
    pub sources: BTreeMap<String, SourceRecord>,
}

impl Learnt {
    /// Read a saved file; `Ok(None)` when there is none. A file of another version, or one whose
    /// counts make no sense, is an error (the caller warns and starts afresh).
    pub fn load(path: &Path) -> crate::Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(crate::Error::io(path, e)),
        };
        let learnt: Learnt = serde_json::from_slice(&bytes).map_err(|e| crate::Error::Unusable {
            path: path.to_path_buf(),
            reason: format!("not a file of learnt acceptance rates: {e}"),
        })?;
        if learnt.version != LEARNT_VERSION {
            return Err(crate::Error::Unusable {
                path: path.to_path_buf(),
                reason: format!("version {} of the learnt acceptance rates; this ibid reads version {LEARNT_VERSION}", learnt.version),
            });
        }
        if let Some((name, _)) = learnt.sources.iter().find(|(_, r)| !r.is_sane()) {
            return Err(crate::Error::Unusable { path: path.to_path_buf(), reason: format!("impossible counts for source {name:?}") });
        }
        Ok(Some(learnt))
    }

    /// Write atomically (a reader sees the old file or the new one, never a part).
    pub fn save(&self, path: &Path) -> crate::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| crate::Error::Internal(format!("cannot encode the learnt acceptance rates: {e}")))?;
        crate::error::write_atomic(path, &bytes)
    }
}

/// Every source's record, and whether its near-certain estimates are meant
/// ([`super::DraftSource::sure_when_certain`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Calibration {
    records: Vec<SourceRecord>,
    sure: Vec<bool>,
}

impl Calibration {
    pub(super) fn new(sure: Vec<bool>) -> Self {
        Calibration { records: vec![SourceRecord::default(); sure.len()], sure }
    }

    /// Start each source named in `learnt` from what it learnt before (scaled to at most
    /// `REMEMBERED` observations). `names[i]` is source `i`'s name.
    pub(super) fn remember(&mut self, names: &[String], learnt: &Learnt) {
        for (record, name) in self.records.iter_mut().zip(names) {
            if let Some(r) = learnt.sources.get(name) {
                *record = r.capped(REMEMBERED);
            }
        }
    }

    /// The records of this run's sources by name, over those of `earlier` (sources not run now
    /// keep what they had).
    pub(super) fn learnt(&self, names: &[String], earlier: &Learnt) -> BTreeMap<String, SourceRecord> {
        let mut sources = earlier.sources.clone();
        for (record, name) in self.records.iter().zip(names) {
            sources.insert(name.clone(), record.clone());
        }
        sources
    }

    /// The posterior mean of the probability that a node is accepted once its parent was. The
    /// source's estimate, scaled by how its estimates have fared overall (accepted / predicted,
    /// learnt from every depth at once), is the prior of the source-and-depth rate; that is the
    /// prior of the finer cell. Each prior is worth `PRIOR_WEIGHT` observations. Also returns
    /// the evidence behind it, in observations.
    fn mean(&self, source: usize, raw: f64, depth: usize) -> (f64, f64) {
        let r = &self.records[source];
        let (b, d) = (score_bin(raw), depth_bin(depth));
        let fared = (r.hits + PRIOR_WEIGHT) / (r.predicted + PRIOR_WEIGHT);
        let sure = self.sure[source];
        let prior = (prior_of(raw, sure) * fared).min(ceiling(sure));
        let coarse = (r.source_accepted[d] + PRIOR_WEIGHT * prior) / (r.source_reached[d] + PRIOR_WEIGHT);
        let mean = (r.accepted[b][d] + PRIOR_WEIGHT * coarse) / (r.reached[b][d] + PRIOR_WEIGHT);
        // The cell's own outcomes and the prior's weight, and a share of the source-and-depth
        // outcomes that set the prior (they speak for this cell only in part).
        let evidence = r.reached[b][d] + PRIOR_WEIGHT + r.source_reached[d] / 4.0;
        (mean, evidence)
    }

    /// The probability the budget works with: the lower confidence bound of [`Self::mean`].
    pub(super) fn accept_probability(&self, source: usize, raw: f64, depth: usize) -> f64 {
        let (mean, evidence) = self.mean(source, raw, depth);
        (mean - CONFIDENCE_Z * (mean * (1.0 - mean) / (evidence + 1.0)).sqrt()).clamp(0.0, 1.0)
    }

    pub(super) fn record(&mut self, source: usize, raw: f64, depth: usize, accepted: bool) {
        let (b, d) = (score_bin(raw), depth_bin(depth));
        let hit = f64::from(u8::from(accepted));
        let sure = self.sure[source];
        let r = &mut self.records[source];
        r.reached[b][d] += 1.0;
        r.accepted[b][d] += hit;
        r.source_reached[d] += 1.0;
        r.source_accepted[d] += hit;
        r.predicted += prior_of(raw, sure);
        r.hits += hit;
    }

    #[cfg(test)]
    pub(super) fn reached_at(&self, source: usize, depth: usize) -> f64 {
        self.records[source].source_reached[depth_bin(depth)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_early_failures_do_not_silence_a_source_but_many_do() {
        // (the posterior mean: the bound below it is low at first whatever happens)
        let mut c = Calibration::new(vec![false, false]);
        let mean = |c: &Calibration, s| c.mean(s, 0.6, 1).0;
        let before = mean(&c, 0);
        for _ in 0..4 {
            c.record(0, 0.6, 1, false);
        }
        let after_four = mean(&c, 0);
        assert!(after_four < before && after_four > before / 3.0, "{before} → {after_four}");
        let before = c.accept_probability(1, 0.6, 1);
        for _ in 0..36 {
            c.record(0, 0.6, 1, false);
        }
        assert!(c.accept_probability(0, 0.6, 1) < 0.05, "{}", c.accept_probability(0, 0.6, 1));
        // the other source is untouched; one that keeps succeeding climbs above its own estimate
        assert_eq!(c.accept_probability(1, 0.6, 1), before);
        for _ in 0..40 {
            c.record(1, 0.6, 1, true);
        }
        assert!(c.accept_probability(1, 0.6, 1) > 0.85, "{}", c.accept_probability(1, 0.6, 1));
    }

    #[test]
    fn the_bound_is_below_the_mean_and_closes_in_as_evidence_grows() {
        let mut c = Calibration::new(vec![false]);
        let (mean, _) = c.mean(0, 0.7, 1);
        let cold = c.accept_probability(0, 0.7, 1);
        // a cold start is not taken at face value
        assert!(cold < mean - 0.1, "{cold} vs {mean}");
        // outcomes at the rate the prior expects: the mean stays, the bound rises toward it
        let rate = mean;
        let mut gaps = Vec::new();
        for round in 0..5 {
            for i in 0..40 {
                c.record(0, 0.7, 1, (i as f64 + 0.5) / 40.0 < rate);
            }
            let (m, _) = c.mean(0, 0.7, 1);
            gaps.push(m - c.accept_probability(0, 0.7, 1));
            assert!((m - rate).abs() < 0.05, "round {round}: {m} vs {rate}");
        }
        assert!(gaps.windows(2).all(|w| w[1] < w[0]), "{gaps:?}");
        assert!(gaps[4] < 0.04, "{gaps:?}");
    }

    #[test]
    fn near_certain_estimates_of_a_sure_source_are_not_discounted() {
        let mut c = Calibration::new(vec![true, false]);
        let chain = |c: &Calibration, source: usize| (1..=40).map(|d| c.accept_probability(source, 0.9995, d)).product::<f64>();
        // at a cold start a 40-token copy is worth drafting (its bound is well above 0), a chain
        // of an unsure source is not
        assert!(chain(&c, 0) > 0.5, "{}", chain(&c, 0));
        assert!(chain(&c, 1) < 1e-3, "{}", chain(&c, 1));
        // below 0.97 both are discounted alike
        assert_eq!(c.accept_probability(0, 0.9, 1), c.accept_probability(1, 0.9, 1));
        assert!(c.accept_probability(0, 0.9, 1) < 0.75);
        // copies that succeed make the whole chain near-certain
        for _ in 0..20 {
            for d in 1..=40 {
                c.record(0, 0.9995, d, true);
            }
        }
        assert!(chain(&c, 0) > 0.9, "{}", chain(&c, 0));
    }

    #[test]
    fn what_was_learnt_carries_over_capped_and_by_name() {
        let names: Vec<String> = vec!["context".into(), "ngram".into()];
        let mut c = Calibration::new(vec![true, false]);
        for i in 0..2000 {
            c.record(1, 0.6, 1, i % 4 != 0); // ngram right three times in four
        }
        let earlier = Learnt {
            version: LEARNT_VERSION,
            sources: BTreeMap::from([("index".to_string(), SourceRecord::default())]),
            ..Learnt::default()
        };
        let saved = Learnt { sources: c.learnt(&names, &earlier), ..earlier.clone() };
        // a source not run now keeps its record; the run's sources are saved by name
        assert_eq!(saved.sources.keys().collect::<Vec<_>>(), ["context", "index", "ngram"]);
        assert_eq!(saved.sources["ngram"].observations(), 2000.0);

        // a new run with the sources in another order starts from it, capped
        let mut next = Calibration::new(vec![false, true]);
        let cold = next.accept_probability(0, 0.6, 1);
        next.remember(&["ngram".to_string(), "context".to_string()], &saved);
        assert_eq!(next.records[0].observations(), REMEMBERED);
        let warm = next.accept_probability(0, 0.6, 1);
        assert!(warm > cold + 0.15 && (warm - 0.75).abs() < 0.05, "{cold} → {warm}");
        // the capped evidence still yields to a run's own outcomes
        for _ in 0..300 {
            next.record(0, 0.6, 1, false);
        }
        assert!(next.accept_probability(0, 0.6, 1) < warm - 0.25, "{warm} → {}", next.accept_probability(0, 0.6, 1));
    }

    #[test]
    fn the_file_round_trips_and_refuses_what_it_cannot_trust() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accept.json");
        assert_eq!(Learnt::load(&path).unwrap(), None);
        let mut c = Calibration::new(vec![false]);
        c.record(0, 0.5, 3, true);
        c.record(0, 0.5, 3, false);
        let learnt = Learnt {
            version: LEARNT_VERSION,
            model_file: "m.gguf".into(),
            model_bytes: 7,
            sources: c.learnt(&["ngram".to_string()], &Learnt::default()),
        };
        learnt.save(&path).unwrap();
        assert_eq!(Learnt::load(&path).unwrap(), Some(learnt.clone()));
        // another version
        let mut other = learnt.clone();
        other.version = LEARNT_VERSION + 1;
        other.save(&path).unwrap();
        assert!(Learnt::load(&path).unwrap_err().to_string().contains("version"));
        // impossible counts: more accepted than reached, negative, not a number
        for bad in [r#""source_accepted":[5.0,0.0,0.0,0.0,0.0]"#, r#""source_reached":[-1.0,0.0,0.0,0.0,0.0]"#, r#""hits":1e999"#] {
            let text = serde_json::to_string(&learnt).unwrap();
            let key = &bad[..bad.find(':').unwrap()];
            let start = text.find(key).unwrap();
            let end = start + text[start..].find([']', ',', '}']).unwrap();
            let end = if text.as_bytes()[start + key.len() + 1] == b'[' { end + 1 } else { end };
            std::fs::write(&path, format!("{}{bad}{}", &text[..start], &text[end..])).unwrap();
            assert!(Learnt::load(&path).is_err(), "{bad}");
        }
        std::fs::write(&path, b"{\"version\": 1, \"sources\": ").unwrap();
        assert!(Learnt::load(&path).unwrap_err().to_string().contains("not a file of learnt"));
    }
}
