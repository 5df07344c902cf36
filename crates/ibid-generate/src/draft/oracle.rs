//! The ceiling: drafts the true continuation (from an earlier run of the same prompt), so every
//! draft is accepted and only the budget and batch costs limit the speedup.

use super::{Candidate, DraftSource};

pub struct OracleSource {
    prompt_len: usize,
    reference: Vec<u32>,
}

impl OracleSource {
    /// `prompt_len` tokens of prompt (BOS included) are followed by `reference`.
    pub fn new(prompt_len: usize, reference: Vec<u32>) -> Self {
        OracleSource { prompt_len, reference }
    }
}

impl DraftSource for OracleSource {
    fn name(&self) -> &str {
        "oracle"
    }

    /// It drafts the known continuation.
    fn sure_when_certain(&self) -> bool {
        true
    }

    fn propose(&mut self, context: &[u32], max_depth: usize) -> Vec<Candidate> {
        // The context is the prompt and the tokens generated so far; the first draft node guesses
        // the next one. While the output follows the reference that is `reference[generated]`;
        // after a divergence (a near-tie decided the other way) drafting resumes after the
        // latest place in the reference where the last tokens match.
        let Some(generated) = context.len().checked_sub(self.prompt_len) else { return Vec::new() };
        let output = &context[self.prompt_len..];
        let from = if self.reference.get(..generated) == Some(output) {
            Some(generated)
        } else {
            (1..=output.len().min(8)).rev().find_map(|m| {
                let tail = &output[output.len() - m..];
                (m..=self.reference.len()).rev().find(|&end| self.reference[end - m..end] == *tail)
            })
        };
        match from {
            Some(f) if f < self.reference.len() => {
                vec![Candidate::uniform(self.reference[f..(f + max_depth).min(self.reference.len())].to_vec(), 1.0)]
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_the_reference_after_what_was_generated() {
        let mut o = OracleSource::new(3, vec![10, 11, 12, 13]);
        assert_eq!(o.propose(&[1, 2, 3], 2)[0].tokens, vec![10, 11]);
        assert_eq!(o.propose(&[1, 2, 3, 10, 11], 8)[0].tokens, vec![12, 13]);
        assert!(o.propose(&[1, 2, 3, 10, 11, 12, 13], 8).is_empty());
        assert!(o.propose(&[1], 8).is_empty());
        // diverged at the first token, back in step after "11"
        assert_eq!(o.propose(&[1, 2, 3, 99, 11], 8)[0].tokens, vec![12, 13]);
        assert!(o.propose(&[1, 2, 3, 99, 98], 8).is_empty());
    }
}
