//! Logits of a chain (batched or token by token) and batch timings: the exactness tests' and
//! the cost curve's view of the model.

use super::*;

impl<'m> Session<'m> {
    /// Decode slot 0's pending token and then `tokens` as one batch (or one token per batch), without
    /// keeping them; calls `read` with the logits after each of them (pending first).
    pub(super) fn decode_chain(&mut self, tokens: &[u32], one_by_one: bool, mut read: impl FnMut(&[f32])) -> Result<()> {
        let pending = self.slots[0].pending.ok_or_else(|| Error::Session("nothing to continue: prefill a prompt first".into()))?;
        self.check_tokens(tokens)?;
        if !one_by_one && tokens.len() + 1 > self.options.n_batch as usize {
            return Err(Error::Session(format!("at most {} tokens fit one batch", self.options.n_batch - 1)));
        }
        let per_batch = if one_by_one { 1 } else { tokens.len() + 1 };
        let base = self.slots[0].committed.len();
        if base + tokens.len() + 2 > self.options.n_ctx as usize {
            return Err(Error::ContextFull { n_ctx: self.options.n_ctx as usize, generated: None });
        }
        let all: Vec<u32> = std::iter::once(pending).chain(tokens.iter().copied()).collect();
        for (c, chunk) in all.chunks(per_batch).enumerate() {
            self.batch.clear();
            for (i, &t) in chunk.iter().enumerate() {
                let pos = base + c * per_batch + i;
                self.batch.add(LlamaToken(t as i32), pos as i32, &[0], true).map_err(|e| llama_err("batch", e))?;
            }
            self.ctx.decode(&mut self.batch).map_err(|e| llama_err("decoding", e))?;
            for i in 0..chunk.len() {
                read(self.ctx.get_logits_ith(i as i32));
            }
        }
        self.ctx.clear_kv_cache_seq(Some(0), Some(base as u32), None).map_err(|e| llama_err("trimming the cache", e))?;
        Ok(())
    }

    /// The logits after the pending token and after each of `tokens`, decoded as one batch and not
    /// kept (for tests).
    pub fn logits_of_chain(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(tokens.len() + 1);
        self.decode_chain(tokens, false, |l| out.push(l.to_vec()))?;
        Ok(out)
    }

    /// The same, each token decoded alone (one token per batch): the reference batched logits are
    /// compared with.
    pub fn logits_token_by_token(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(tokens.len() + 1);
        self.decode_chain(tokens, true, |l| out.push(l.to_vec()))?;
        Ok(out)
    }

    /// Seconds for one decode of `n` tokens with logits for all (the pending token and `n - 1`
    /// fillers); the cache is left as it was.
    pub fn time_batch(&mut self, n: usize) -> Result<f64> {
        let filler: Vec<u32> = (0..n.saturating_sub(1)).map(|i| 1000 + i as u32).collect();
        let start = std::time::Instant::now();
        self.decode_chain(&filler, false, |_| {})?;
        Ok(start.elapsed().as_secs_f64())
    }
}
