//! Drafts from n-gram counts of the running context: after the last 1 to 4 tokens, the token
//! that most often followed them, one token at a time (each drafted token is context for the
//! next). Unlike a copy of one earlier occurrence, a chain follows the majority at every step,
//! which suits text whose short phrases recur in varying order (code idioms, list items).

use std::collections::HashMap;

use super::{Candidate, DraftSource};

/// Longest n-gram counted.
const MAX_N: usize = 4;

/// An n-gram's followers: the n used, their total count, and (token, count) pairs.
type Followers<'a> = (usize, u32, &'a [(u32, u32)]);

/// Counts of the tokens that followed each n-gram (1 ≤ n ≤ 4) of a token sequence.
#[derive(Debug, Default)]
struct NgramCounts {
    /// The sequence counted so far.
    seen: Vec<u32>,
    /// Key: the n-gram, padded with `u32::MAX`; value: (next token, count), most frequent first.
    next: HashMap<[u32; MAX_N], Vec<(u32, u32)>>,
}

fn key(gram: &[u32]) -> [u32; MAX_N] {
    let mut k = [u32::MAX; MAX_N];
    k[..gram.len()].copy_from_slice(gram);
    k
}

impl NgramCounts {
    /// Bring the counts up to `tokens`: the new positions only when `tokens` extends what was
    /// counted, from scratch otherwise (a new request).
    fn update(&mut self, tokens: &[u32]) {
        if !tokens.starts_with(&self.seen) {
            *self = NgramCounts::default();
        }
        for end in self.seen.len().max(1)..tokens.len() {
            for n in 1..=MAX_N.min(end) {
                let followers = self.next.entry(key(&tokens[end - n..end])).or_default();
                let t = tokens[end];
                let mut i = match followers.iter().position(|&(f, _)| f == t) {
                    Some(i) => i,
                    None => {
                        followers.push((t, 0));
                        followers.len() - 1
                    }
                };
                followers[i].1 += 1;
                // keep most frequent first: counts grow by one, so moving up past smaller ones suffices
                while i > 0 && followers[i].1 > followers[i - 1].1 {
                    followers.swap(i, i - 1);
                    i -= 1;
                }
            }
        }
        self.seen.extend_from_slice(&tokens[self.seen.len()..]);
    }

    /// The followers of the longest n-gram ending `tokens` that has at least `min_total`
    /// occurrences with a successor, with the n used and that total.
    fn followers(&self, tokens: &[u32], min_total: &[u32; MAX_N]) -> Option<Followers<'_>> {
        (1..=MAX_N.min(tokens.len())).rev().find_map(|n| {
            let f = self.next.get(&key(&tokens[tokens.len() - n..]))?;
            let total: u32 = f.iter().map(|&(_, c)| c).sum();
            (total >= min_total[n - 1]).then_some((n, total, f.as_slice()))
        })
    }
}

/// Running contexts counted at once (a server drafts for several requests in turn).
const MAX_TABLES: usize = 8;

pub struct NgramSource {
    /// Counts per running context, with when each was last used.
    tables: Vec<(u64, NgramCounts)>,
    clock: u64,
    /// Fewest occurrences of an n-gram (n = 1..4) to draft from it: one or two tokens of context
    /// say little until they were seen a few times.
    pub min_total: [u32; MAX_N],
    /// Most alternatives for the first token (each followed by its own greedy chain).
    pub first_alternatives: usize,
    /// A chain stops where its estimated path probability falls below this.
    pub min_path: f64,
}

impl Default for NgramSource {
    fn default() -> Self {
        NgramSource { tables: Vec::new(), clock: 0, min_total: [3, 2, 1, 1], first_alternatives: 2, min_path: 0.05 }
    }
}

/// Estimate for the majority follower: its share, shrunk toward 0 by one unseen occurrence (a
/// follower seen once of once is a guess), and by how little context the n-gram holds.
fn estimate(count: u32, total: u32, n: usize) -> f64 {
    let context_weight = [0.6, 0.8, 0.9, 0.95][n - 1];
    context_weight * count as f64 / (total as f64 + 1.0)
}

impl NgramSource {
    /// The counts of `context`: those of the longest context counted so far that it extends,
    /// brought up to date; a new table (or the least recently used one, cleared) otherwise.
    fn counts_for(&mut self, context: &[u32]) -> &NgramCounts {
        self.clock += 1;
        let extends = self.tables.iter().enumerate().filter(|(_, (_, t))| context.starts_with(&t.seen));
        let i = match extends.max_by_key(|(_, (_, t))| t.seen.len()).map(|(i, _)| i) {
            Some(i) => i,
            None if self.tables.len() < MAX_TABLES => {
                self.tables.push((0, NgramCounts::default()));
                self.tables.len() - 1
            }
            None => {
                let lru = (0..self.tables.len()).min_by_key(|&i| self.tables[i].0).unwrap_or(0);
                self.tables[lru].1 = NgramCounts::default();
                lru
            }
        };
        let (used, counts) = &mut self.tables[i];
        *used = self.clock;
        counts.update(context);
        counts
    }
}

impl DraftSource for NgramSource {
    fn name(&self) -> &str {
        "ngram"
    }

    fn propose(&mut self, context: &[u32], max_depth: usize) -> Vec<Candidate> {
        let (min_total, alternatives, min_path) = (self.min_total, self.first_alternatives, self.min_path);
        let counts = self.counts_for(context);
        let Some((n, total, first)) = counts.followers(context, &min_total) else { return Vec::new() };
        let firsts: Vec<(u32, f64)> = first.iter().take(alternatives).map(|&(t, c)| (t, estimate(c, total, n))).collect();
        let mut out = Vec::new();
        // Lookups see at most the last MAX_N tokens: the context's tail, then the chain.
        let tail = &context[context.len().saturating_sub(MAX_N)..];
        let mut extended = tail.to_vec();
        for (token, score) in firsts {
            extended.truncate(tail.len());
            extended.push(token);
            let mut cand = Candidate { tokens: vec![token], scores: vec![score] };
            let mut path = score;
            while cand.tokens.len() < max_depth {
                let Some((n, total, f)) = counts.followers(&extended, &min_total) else { break };
                let (t, c) = f[0];
                let p = estimate(c, total, n);
                path *= p;
                if path < min_path {
                    break;
                }
                cand.tokens.push(t);
                cand.scores.push(p);
                extended.push(t);
            }
            out.push(cand);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: followers of `gram` in `tokens`, counted by scanning.
    fn count_followers(tokens: &[u32], gram: &[u32]) -> HashMap<u32, u32> {
        let mut m = HashMap::new();
        for end in gram.len()..tokens.len() {
            if tokens[end - gram.len()..end] == *gram {
                *m.entry(tokens[end]).or_default() += 1;
            }
        }
        m
    }

    #[test]
    fn incremental_counts_match_a_scan_and_stay_sorted() {
        let mut state = 7u64;
        let tokens: Vec<u32> = (0..400)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 60) as u32 % 5
            })
            .collect();
        let mut counts = NgramCounts::default();
        for end in [1, 2, 50, 51, 200, 400] {
            counts.update(&tokens[..end]);
        }
        for n in 1..=MAX_N {
            for start in 0..tokens.len() - n {
                let gram = &tokens[start..start + n];
                let got: HashMap<u32, u32> = counts.next[&key(gram)].iter().copied().collect();
                assert_eq!(got, count_followers(&tokens, gram), "{gram:?}");
                assert!(counts.next[&key(gram)].windows(2).all(|w| w[0].1 >= w[1].1));
            }
        }
        // a context that does not extend the counted one starts over
        counts.update(&[9, 9, 9]);
        assert_eq!(counts.next[&key(&[9])], vec![(9, 2)]);
        assert!(!counts.next.contains_key(&key(&[0])));
    }

    #[test]
    fn chains_follow_the_majority_one_token_at_a_time() {
        // only single tokens as context
        let mut d = NgramSource { min_total: [1, 99, 99, 99], ..NgramSource::default() };
        // after 1 comes 2 (three times) or 3 (once); after 2 comes 4; after 4 comes 1
        let ctx = [1, 2, 4, 1, 2, 4, 1, 3, 4, 1, 2, 4, 1];
        let c = d.propose(&ctx, 5);
        assert_eq!(c[0].tokens[..3], [2, 4, 1], "{c:?}");
        assert_eq!(c[1].tokens[0], 3, "the runner-up first token is an alternative");
        assert!(c[0].scores[0] > c[1].scores[0]);
        assert!(c.iter().all(|x| x.scores.iter().all(|&p| p > 0.0 && p < 1.0)));
        // nothing is drafted from an n-gram seen too rarely
        let mut strict = NgramSource::default();
        assert!(strict.propose(&[5, 6, 5], 4).is_empty());
    }

    #[test]
    fn contexts_drafted_in_turn_keep_their_own_counts() {
        let mut d = NgramSource { min_total: [1, 99, 99, 99], ..NgramSource::default() };
        let a = [1, 2, 1, 2, 1];
        let b = [1, 3, 1, 3, 1];
        for step in 0..3 {
            let mut a = a.to_vec();
            a.extend(std::iter::repeat_n(1, step));
            assert_eq!(d.propose(&a, 1)[0].tokens, vec![2], "{step}");
            assert_eq!(d.propose(&b, 1)[0].tokens, vec![3], "{step}");
        }
        assert_eq!(d.tables.len(), 2, "each context extended its own table");
        // more contexts than tables: the least recently used is cleared and reused
        for t in 10..10 + MAX_TABLES as u32 {
            d.propose(&[t, t, t], 1);
        }
        assert_eq!(d.tables.len(), MAX_TABLES);
        assert!(d.tables.iter().all(|(_, t)| t.seen[0] >= 10), "the first two were the least recently used");
    }
}
