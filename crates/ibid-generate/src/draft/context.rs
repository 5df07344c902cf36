//! Drafts from the running context (prompt and output so far): where the last tokens occurred
//! before, what followed them then is likely to follow now. Copy-heavy answers live here.

use super::{Candidate, DraftSource};

pub struct ContextSource {
    /// Longest suffix to match.
    pub max_match: usize,
    /// Shortest match worth drafting from.
    pub min_match: usize,
    /// Most continuations proposed per step.
    pub max_candidates: usize,
}

impl Default for ContextSource {
    fn default() -> Self {
        ContextSource { max_match: 16, min_match: 1, max_candidates: 8 }
    }
}

/// The estimate for a token after a match of `m` tokens (spread over the range so that
/// calibration can tell matches of 1 to about 12 tokens apart).
fn match_estimate(m: usize) -> f64 {
    1.0 - 0.7f64.powi(m.min(64) as i32)
}

/// Length of the common suffix of `a[..i]` and `a` (capped), i.e. how well position `i` matches
/// the end of the context.
fn suffix_match(a: &[u32], i: usize, cap: usize) -> usize {
    let n = a.len();
    let mut m = 0;
    while m < cap && m < i && a[i - 1 - m] == a[n - 1 - m] {
        m += 1;
    }
    m
}

/// Up to `len` tokens copied from position `i` on. A copy that reaches the end of the context
/// goes on with its own start: the context ends as it did `n - i` tokens before, so a loop of
/// that period continues past what was written so far.
fn periodic_copy(a: &[u32], i: usize, len: usize) -> Vec<u32> {
    let period = a.len() - i;
    (0..len).map(|k| a[i + k % period]).collect()
}

impl DraftSource for ContextSource {
    fn name(&self) -> &str {
        "context"
    }

    /// Its estimate nears 1 only along long exact matches.
    fn sure_when_certain(&self) -> bool {
        true
    }

    fn propose(&mut self, context: &[u32], max_depth: usize) -> Vec<Candidate> {
        let n = context.len();
        if n < 2 {
            return Vec::new();
        }
        // (match length, end position of the earlier occurrence)
        let mut matches: Vec<(usize, usize)> = (1..n)
            .filter_map(|i| {
                let m = suffix_match(context, i, self.max_match);
                (m >= self.min_match).then_some((m, i))
            })
            .collect();
        // longest matches first, the most recent among equals
        matches.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        let mut out: Vec<Candidate> = Vec::new();
        for &(m, i) in &matches {
            if out.len() >= self.max_candidates {
                break;
            }
            let tokens = periodic_copy(context, i, max_depth);
            if tokens.is_empty() || out.iter().any(|c| c.tokens.starts_with(&tokens)) {
                continue;
            }
            // A longer match predicts better, and a copy that went on for d more tokens has
            // become a match of m + d: deep tokens of a long copy are the surest of all.
            let mut scores: Vec<f64> = (0..tokens.len()).map(|d| match_estimate(m + d)).collect();
            // Among the occurrences matching at least as long, the share that went on with this
            // token: a continuation that followed one of many is less likely than one that
            // followed all of them.
            let peers = matches.partition_point(|&(mj, _)| mj >= m);
            let agree = matches[..peers].iter().filter(|&&(_, j)| context[j] == tokens[0]).count();
            scores[0] *= 0.5 + 0.5 * agree as f64 / peers as f64;
            out.push(Candidate { tokens, scores });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_drafted_past_the_end_of_the_context() {
        let mut d = ContextSource::default();
        //          a  b  c  a  b  c  a  b
        let ctx = [1, 2, 3, 1, 2, 3, 1, 2];
        let c = d.propose(&ctx, 7);
        assert_eq!(c[0].tokens, vec![3, 1, 2, 3, 1, 2, 3], "the loop of period 3 goes on");
        assert!(c[0].scores.windows(2).all(|w| w[0] < w[1]), "{:?}", c[0].scores);
    }

    #[test]
    fn continues_the_longest_recent_match() {
        let mut d = ContextSource::default();
        //          a  b  c  d  x  a  b  c  e  y  a  b  c
        let ctx = [1, 2, 3, 4, 9, 1, 2, 3, 5, 8, 1, 2, 3];
        let c = d.propose(&ctx, 3);
        assert_eq!(c[0].tokens, vec![5, 8, 1], "most recent of the equally long matches first");
        assert_eq!(c[1].tokens, vec![4, 9, 1]);
        assert!(c.iter().all(|x| x.scores.iter().all(|&p| p > 0.0 && p < 1.0)));
        assert!(c[0].scores.windows(2).all(|w| w[0] < w[1]), "deeper tokens of a copy are surer: {:?}", c[0].scores);
        // "7" was followed by 5 twice and by 6 once: at equal match length, 5 is the surer guess
        let c = d.propose(&[1, 7, 5, 2, 7, 6, 3, 7, 5, 4, 7], 1);
        let first = |t: u32| c.iter().find(|x| x.tokens[0] == t).unwrap().scores[0];
        assert!(first(5) > first(6), "{c:?}");
        assert!(d.propose(&[1], 4).is_empty());
        assert!(d.propose(&[1, 2, 3], 4).is_empty(), "no earlier occurrence of the last token");
    }
}
