//! Several draft sources merged into one ranked tree: a trie of every candidate, each token's
//! calibrated acceptance probability, nodes taken best first by path probability.

use super::calibration::{Calibration, Learnt, LEARNT_VERSION};
use super::{DraftSource, RankedTree, SourceStats, MAX_AUTO_BUDGET};
use crate::engine::Drafter;
use crate::verify::SourceId;
use crate::verify::{DraftTree, StepOutcome};

/// One node of the merged candidate trie.
struct TrieNode {
    token: u32,
    depth: usize,
    source: SourceId,
    raw: f64,
    /// Calibrated probability of acceptance given the parent.
    q: f64,
    children: Vec<usize>,
    /// The other sources that proposed this token here, with their raw estimates.
    seconders: Vec<(SourceId, f64)>,
}

/// Several draft sources merged into one tree. Every candidate token gets a calibrated acceptance
/// probability (its source's estimate, corrected by what such estimates achieved so far); nodes
/// enter the tree by descending path probability, shared prefixes once; the budget then keeps
/// the number of nodes that maximizes expected tokens per unit of verification cost.
pub struct MergingDrafter<'a> {
    sources: Vec<Box<dyn DraftSource + 'a>>,
    pub stats: Vec<SourceStats>,
    pub max_depth: usize,
    calibration: Calibration,
    /// Where what the sources' estimates are worth is remembered across runs, and what it held.
    memory: Option<(std::path::PathBuf, Learnt)>,
}

impl<'a> MergingDrafter<'a> {
    pub fn new(sources: Vec<Box<dyn DraftSource + 'a>>) -> Self {
        let n = sources.len();
        let sure = sources.iter().map(|p| p.sure_when_certain()).collect();
        MergingDrafter {
            sources,
            stats: vec![SourceStats::default(); n],
            max_depth: MAX_AUTO_BUDGET,
            calibration: Calibration::new(sure),
            memory: None,
        }
    }

    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|p| p.name().to_string()).collect()
    }

    /// Per source: name, drafted and accepted tokens, and the source's own figures.
    pub fn source_report(&self) -> Vec<serde_json::Value> {
        self.sources
            .iter()
            .zip(&self.stats)
            .map(|(p, s)| {
                serde_json::json!({
                    "source": p.name(), "drafted": s.drafted, "accepted": s.accepted,
                    "acceptance": s.accepted as f64 / s.drafted.max(1) as f64,
                    "details": p.details(),
                })
            })
            .collect()
    }

    /// Start from what earlier runs learnt about the sources' estimates (the file at `path`, see
    /// [`crate::calibrate::learnt_path`]), and save what this run learns there at [`Self::finish`].
    /// A file that cannot be trusted is not used (the error says why; the caller warns): learning
    /// starts afresh and replaces it at the end.
    pub fn remember(&mut self, path: std::path::PathBuf, model: &std::path::Path) -> crate::Result<()> {
        let (model_file, model_bytes) = crate::calibrate::model_id(model);
        let fresh = Learnt { version: LEARNT_VERSION, model_file, model_bytes, ..Learnt::default() };
        let (earlier, problem) = match Learnt::load(&path) {
            Ok(Some(l)) => (l, Ok(())),
            Ok(None) => (fresh, Ok(())),
            Err(e) => (fresh, Err(e)),
        };
        self.calibration.remember(&self.source_names(), &earlier);
        self.memory = Some((path, earlier));
        problem
    }

    /// Let every source persist what it learnt (and the calibration, with [`Self::remember`]);
    /// the first error is returned after all have run.
    pub fn finish(&mut self) -> crate::Result<()> {
        let mut first = match &self.memory {
            Some((path, earlier)) => {
                let learnt = Learnt { sources: self.calibration.learnt(&self.source_names(), earlier), ..earlier.clone() };
                learnt.save(path)
            }
            None => Ok(()),
        };
        for p in &mut self.sources {
            if let Err(e) = p.finish() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Up to `max_nodes` nodes in one tree, best first by estimated path probability, for the
    /// caller to cut (see [`Budget::choose_joint`]).
    pub fn rank(&mut self, context: &[u32], max_nodes: usize) -> RankedTree {
        let (mut nodes, roots) = self.trie(context);
        normalize_siblings(&mut nodes, &roots);
        for n in 0..nodes.len() {
            let children = nodes[n].children.clone();
            normalize_siblings(&mut nodes, &children);
        }
        // Best first by path probability; a child never beats its parent, so parents come first.
        let mut open: Vec<(f64, usize, Option<usize>)> = roots.iter().map(|&r| (nodes[r].q, r, None)).collect();
        let mut ranked = RankedTree::default();
        while ranked.tree.len() < max_nodes {
            let Some(best) = (0..open.len()).max_by(|&a, &b| open[a].0.total_cmp(&open[b].0)) else { break };
            let (p, n, parent) = open.swap_remove(best);
            let id = ranked.tree.push(parent, nodes[n].token, nodes[n].source);
            debug_assert_eq!(ranked.tree.depth(id), nodes[n].depth);
            ranked.path_p.push(p);
            ranked.raw.push(nodes[n].raw);
            ranked.seconders.push(nodes[n].seconders.clone());
            open.extend(nodes[n].children.iter().map(|&c| (p * nodes[c].q, c, Some(id))));
        }
        ranked
    }

    /// Learn from a verification step of a tree made by [`Self::rank`] and cut as verified (with
    /// its estimates and shadow nodes): acceptance per source, the calibration, and each source's
    /// own lessons.
    pub fn observe_ranked(&mut self, ranked: &RankedTree, outcome: &StepOutcome) {
        let tree = &ranked.tree;
        let accepted = count_by_source(tree, outcome, &mut self.stats);
        let sources = self.stats.len();
        for node in 0..tree.len() {
            if !tree.parent(node).is_none_or(|p| accepted[p]) {
                continue;
            }
            // Every source that proposed the token is judged on it, not only the one whose
            // estimate won the merge: otherwise a source whose agreement with a stronger one goes
            // unrecorded is judged mostly on the tokens it proposes alone, its failures.
            for (s, raw) in ranked.proposers(node) {
                if (s as usize) < sources {
                    self.calibration.record(s as usize, raw, tree.depth(node), accepted[node]);
                }
            }
        }
        // The token chosen after the last accepted node judges the shadow nodes below it.
        let last = outcome.accepted.last().copied();
        if let Some(&chosen) = outcome.emitted.get(outcome.accepted.len()) {
            let depth = last.map_or(1, |n| tree.depth(n) + 1);
            // Only each source's best one there: the others are the alternatives that a tree
            // drafts only when there is budget to spare, and their failures would pull down the
            // source's rate at that depth for its best candidates too.
            let mut judged: Vec<SourceId> = Vec::new();
            for sh in ranked.shadow.iter().filter(|sh| sh.parent == last) {
                for (s, raw) in std::iter::once((sh.source, sh.raw)).chain(sh.seconders.iter().copied()) {
                    if (s as usize) < sources && !judged.contains(&s) {
                        judged.push(s);
                        self.calibration.record(s as usize, raw, depth, sh.token == chosen);
                    }
                }
            }
        }
        for (i, p) in self.sources.iter_mut().enumerate() {
            p.observe(tree, outcome, i as SourceId);
        }
    }

    /// All candidates of all sources in one trie (children of the root have `parent: None`).
    fn trie(&mut self, context: &[u32]) -> (Vec<TrieNode>, Vec<usize>) {
        let mut nodes: Vec<TrieNode> = Vec::new();
        let mut roots: Vec<usize> = Vec::new();
        for i in 0..self.sources.len() {
            let max_depth = self.max_depth;
            for c in self.sources[i].propose(context, max_depth) {
                let mut parent: Option<usize> = None;
                for (d, (&t, &raw)) in c.tokens.iter().zip(&c.scores).enumerate().take(max_depth) {
                    let q = self.calibration.accept_probability(i, raw, d + 1);
                    let siblings = parent.map_or(&roots, |p| &nodes[p].children);
                    let found = siblings.iter().copied().find(|&n| nodes[n].token == t);
                    let node = match found {
                        Some(n) => {
                            nodes[n].add_proposer(i as SourceId, raw, q);
                            n
                        }
                        None => {
                            let n = nodes.len();
                            nodes.push(TrieNode {
                                token: t,
                                depth: d + 1,
                                source: i as SourceId,
                                raw,
                                q,
                                children: Vec::new(),
                                seconders: Vec::new(),
                            });
                            match parent {
                                Some(p) => nodes[p].children.push(n),
                                None => roots.push(n),
                            }
                            n
                        }
                    };
                    parent = Some(node);
                }
            }
        }
        (nodes, roots)
    }
}

impl TrieNode {
    /// Source `source` proposes this token too: the likelier estimate leads (the tree takes its
    /// source and probability), the other is kept for calibration, once per source (its highest).
    fn add_proposer(&mut self, source: SourceId, raw: f64, q: f64) {
        if source == self.source {
            if q > self.q {
                (self.q, self.raw) = (q, raw);
            }
            return;
        }
        if q > self.q {
            let (old_source, old_raw) = (self.source, self.raw);
            (self.q, self.raw, self.source) = (q, raw, source);
            self.seconders.retain(|&(s, _)| s != source);
            self.seconders.push((old_source, old_raw));
            return;
        }
        match self.seconders.iter_mut().find(|(s, _)| *s == source) {
            Some(entry) => entry.1 = entry.1.max(raw),
            None => self.seconders.push((source, raw)),
        }
    }
}

/// Add a step's draft and accepted tokens to `stats`, per source; returns which nodes were accepted.
pub fn count_by_source(tree: &DraftTree, outcome: &StepOutcome, stats: &mut [SourceStats]) -> Vec<bool> {
    let mut accepted = vec![false; tree.len()];
    for &n in &outcome.accepted {
        accepted[n] = true;
    }
    for (node, &ok) in accepted.iter().enumerate() {
        if let Some(s) = stats.get_mut(tree.source(node) as usize) {
            s.drafted += 1;
            s.accepted += u64::from(ok);
        }
    }
    accepted
}

/// Siblings exclude each other, so their probabilities cannot sum past 1: the likeliest keeps its
/// estimate and each next one gets at most what is left.
fn normalize_siblings(nodes: &mut [TrieNode], siblings: &[usize]) {
    let mut order = siblings.to_vec();
    order.sort_by(|&a, &b| nodes[b].q.total_cmp(&nodes[a].q));
    let mut left = 1.0f64;
    for c in order {
        nodes[c].q = nodes[c].q.min(left);
        left -= nodes[c].q;
    }
}

impl Drafter for MergingDrafter<'_> {
    fn rank(&mut self, context: &[u32], max_nodes: usize) -> RankedTree {
        MergingDrafter::rank(self, context, max_nodes)
    }

    fn observe(&mut self, drafted: &RankedTree, outcome: &StepOutcome) {
        self.observe_ranked(drafted, outcome);
    }

    fn wants_logits(&self) -> bool {
        self.sources.iter().any(|p| p.wants_logits())
    }

    fn observe_logits(&mut self, token: u32, logits: &[f32]) {
        for p in self.sources.iter_mut().filter(|p| p.wants_logits()) {
            p.observe_logits(token, logits);
        }
    }

    fn finish(&mut self) -> crate::Result<()> {
        MergingDrafter::finish(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draft::Candidate;

    struct Fixed(Vec<Candidate>);
    impl DraftSource for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn propose(&mut self, _: &[u32], _: usize) -> Vec<Candidate> {
            self.0.clone()
        }
    }

    #[test]
    fn limit_leaves_keeps_a_prefix_with_at_most_that_many_paths() {
        let mut r = RankedTree::default();
        // 0 and 1 are roots; 2 under 0; 3 under 0; 4 under 2; 5 under 1
        for (parent, token) in [(None, 1), (None, 2), (Some(0), 3), (Some(0), 4), (Some(2), 5), (Some(1), 6)] {
            r.tree.push(parent, token, 0);
            r.path_p.push(0.5);
            r.raw.push(0.5);
        }
        for max in 1..=4 {
            let mut cut = r.clone();
            cut.limit_leaves(max);
            assert!(cut.tree.leaves().len() <= max, "{max}: {}", cut.tree.leaves().len());
            // brute force: a prefix's path count never falls as it grows; keep all before the first over
            let first_over = (0..=r.tree.len()).find(|&k| {
                let mut t = r.tree.clone();
                t.truncate(k);
                t.leaves().len() > max
            });
            assert_eq!(cut.tree.len(), first_over.map_or(r.tree.len(), |k| k - 1), "{max}");
            assert_eq!((cut.path_p.len(), cut.raw.len()), (cut.tree.len(), cut.tree.len()));
        }
    }

    #[test]
    fn shadow_nodes_teach_the_calibration_without_being_verified() {
        // two sources propose different first tokens; steps verify nothing (budget 0)
        let proposers: Vec<Box<dyn DraftSource>> =
            vec![Box::new(Fixed(vec![Candidate::uniform(vec![5, 6], 0.5)])), Box::new(Fixed(vec![Candidate::uniform(vec![7], 0.5)]))];
        let mut c = MergingDrafter::new(proposers);
        let first_p = |c: &mut MergingDrafter, token: u32| {
            let r = c.rank(&[0], 8);
            (0..r.tree.len()).find(|&n| r.tree.token(n) == token && r.tree.parent(n).is_none()).map(|n| r.path_p[n]).unwrap()
        };
        let (five, seven) = (first_p(&mut c, 5), first_p(&mut c, 7));
        for _ in 0..10 {
            let mut r = c.rank(&[0], 8);
            r.truncate(0);
            // the shadow holds each root candidate, and only those (6 is below an unkept node)
            let mut shadow: Vec<u32> = r.shadow.iter().map(|s| s.token).collect();
            shadow.sort();
            assert_eq!(shadow, vec![5, 7]);
            // the model chose 5: source 0 was right, source 1 wrong
            let out = StepOutcome { emitted: vec![5], accepted: vec![], margins: vec![1.0], batch_tokens: 1 };
            c.observe_ranked(&r, &out);
        }
        assert!(first_p(&mut c, 5) > five + 0.2, "{five} → {}", first_p(&mut c, 5));
        assert!(first_p(&mut c, 7) < seven / 2.0, "{seven} → {}", first_p(&mut c, 7));
        // nothing was drafted, so nothing counts as drafted
        assert_eq!((c.stats[0].drafted, c.stats[1].drafted), (0, 0));
    }

    #[test]
    fn every_source_that_proposed_a_node_is_judged_on_it() {
        // both propose 5 first; source 0's estimate is the higher, so the tree credits it
        let proposers: Vec<Box<dyn DraftSource>> =
            vec![Box::new(Fixed(vec![Candidate::uniform(vec![5], 0.9)])), Box::new(Fixed(vec![Candidate::uniform(vec![5, 6], 0.3)]))];
        let mut c = MergingDrafter::new(proposers);
        let before = c.calibration.accept_probability(1, 0.3, 1);
        for _ in 0..20 {
            let mut r = c.rank(&[0], 8);
            assert_eq!((r.tree.source(0), r.proposers(0).collect::<Vec<_>>()), (0, vec![(0, 0.9), (1, 0.3)]));
            r.truncate(1);
            // 5 accepted; 6, cut off below it, was right too
            let out = StepOutcome { emitted: vec![5, 6], accepted: vec![0], margins: vec![1.0, 1.0], batch_tokens: 2 };
            c.observe_ranked(&r, &out);
        }
        // source 1 learnt from the node it shared (its p at depth 1 climbs) and from its shadow at depth 2
        assert!(c.calibration.accept_probability(1, 0.3, 1) > before + 0.3, "{before} → {}", c.calibration.accept_probability(1, 0.3, 1));
        assert_eq!(c.calibration.reached_at(1, 1), 20.0);
        assert_eq!(c.calibration.reached_at(1, 2), 20.0);
        // the tree's counts credit the node to the source it was drafted under
        assert_eq!((c.stats[0].drafted, c.stats[0].accepted, c.stats[1].drafted), (20, 20, 0));
    }

    #[test]
    fn merges_best_first_within_budget() {
        let mut c = MergingDrafter::new(vec![Box::new(Fixed(vec![
            Candidate::uniform(vec![1, 2, 3], 0.9),
            Candidate { tokens: vec![1, 2, 4], scores: vec![0.9, 0.9, 0.5] },
            Candidate::uniform(vec![7, 8], 0.1),
        ]))]);
        let t = c.rank(&[0], 4).tree;
        assert_eq!(t.len(), 4);
        assert_eq!(t.path(2), vec![1, 2, 3]);
        assert_eq!(t.path(3), vec![1, 2, 4]);
        let r = c.rank(&[0], 10);
        assert_eq!(r.tree.len(), 6);
        let out = StepOutcome { emitted: vec![1, 2, 9], accepted: vec![0, 1], margins: vec![], batch_tokens: 7 };
        c.observe(&r, &out);
        assert_eq!((c.stats[0].drafted, c.stats[0].accepted), (6, 2));
    }
}
