//! The session's cache bookkeeping: prompts into slots (sharing cached starts), cells retired,
//! kept and compacted, finished sequences parked for later prompts.

use super::*;

impl<'m> Session<'m> {
    /// Cells in use: every slot's committed tokens, the prompt cache and the retired cells. Cells
    /// that slots share are counted once per slot, as compaction stores them (an upper bound until then).
    pub(super) fn used_cells(&self) -> usize {
        self.retired
            + self.slots.iter().map(|s| s.committed.len()).sum::<usize>()
            + self.parked.iter().map(|p| p.tokens.len()).sum::<usize>()
    }

    /// Make room for `needed` more cells: compact when the cache is full or mostly retired cells
    /// (masked, so they change no sum, but attention still scans them), and drop cached prompts,
    /// oldest first, when that is not enough.
    pub(super) fn make_room(&mut self, needed: usize) -> Result<()> {
        let n_ctx = self.options.n_ctx as usize;
        let mut live = self.used_cells() - self.retired;
        if live + self.retired + needed <= n_ctx && self.retired <= live.max(COMPACT_AFTER) {
            return Ok(());
        }
        while live + needed > n_ctx {
            let oldest = (0..self.parked.len()).filter(|&i| !self.parked[i].tokens.is_empty()).min_by_key(|&i| self.parked[i].parked_at);
            let Some(oldest) = oldest else {
                return Err(Error::ContextFull { n_ctx, generated: None });
            };
            live -= self.parked[oldest].tokens.len();
            self.drop_parked(oldest, 0)?;
        }
        self.compact()
    }

    /// Move the cells of sequence `seq` from position `from` on to the retired sequence.
    pub(super) fn retire_cells(&mut self, seq: i32, from: usize) -> Result<()> {
        let (retired, from) = (self.retired_seq(), Some(from as u32));
        self.ctx.kv_cache_seq_cp(seq, retired, from, None).map_err(|e| llama_err("retiring cells", e))?;
        self.ctx.kv_cache_seq_rm(seq, from, None).map_err(|e| llama_err("retiring cells", e))?;
        Ok(())
    }

    /// Retire every cell of `slot` and empty it.
    pub(super) fn retire_slot(&mut self, slot: usize) -> Result<()> {
        let n = self.slots[slot].committed.len();
        self.retire_cells(self.seq_base(slot), 0)?;
        self.retired += n;
        self.slots[slot] = Slot::default();
        Ok(())
    }

    /// Forget cached prompt `i`; its cells from `kept` on are retired (the ones before were
    /// handed to a slot).
    pub(super) fn drop_parked(&mut self, i: usize, kept: usize) -> Result<()> {
        let seq = self.parked_seq(i);
        let n = self.parked[i].tokens.len();
        self.retire_cells(seq, kept)?;
        self.ctx.kv_cache_seq_rm(seq, None, None).map_err(|e| llama_err("dropping a cached prompt", e))?;
        self.retired += n - kept.min(n);
        self.parked[i] = Parked::default();
        Ok(())
    }

    /// The sequence id of cached prompt `i`: after every slot's range.
    pub(super) fn parked_seq(&self, i: usize) -> i32 {
        (self.options.slots * self.options.max_sequences) as i32 + i as i32
    }

    /// The first sequence id of `slot`: its committed tokens; the next ids are its tree's branches.
    pub(super) fn seq_base(&self, slot: usize) -> i32 {
        (slot as u32 * self.options.max_sequences) as i32
    }

    pub(super) fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let n = self.model.n_vocab() as u32;
        match tokens.iter().find(|&&t| t >= n) {
            Some(t) => Err(Error::Prompt(format!("token {t} is outside the model's vocabulary of {n}"))),
            None => Ok(()),
        }
    }

    /// Start from `prompt` in slot 0 of an emptied cache (see [`Self::prefill_slot`]).
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.reset();
        self.prefill_slot(0, prompt).map(drop)
    }

    /// Start `slot` (which must be free) from `prompt`: every token but the last goes into the
    /// cache, in chunks of `n_batch`; the last one becomes the pending token. The cached prompt or
    /// running slot that shares the longest start with it gives the slot those tokens' cells (the
    /// same tokens at the same positions have the same keys and values, bit for bit): a cached
    /// prompt is used up, a running slot's cells are shared (concurrent requests with one system
    /// prompt decode it once). The other slots go on unchanged. Returns how many prompt tokens
    /// came from the cache.
    pub fn prefill_slot(&mut self, slot: usize, prompt: &[u32]) -> Result<usize> {
        if slot >= self.slots.len() {
            return Err(Error::Session(format!("slot {slot} does not exist; the session has {}", self.slots.len())));
        }
        if !self.slot_is_free(slot) {
            return Err(Error::Session(format!("slot {slot} is in use")));
        }
        let Some((&last, head)) = prompt.split_last() else {
            return Err(Error::Prompt("the prompt is empty".into()));
        };
        self.check_tokens(prompt)?;
        let n_ctx = self.options.n_ctx as usize;
        if prompt.len() + 1 > n_ctx {
            return Err(Error::Prompt(format!("the prompt has {} tokens, more than the context of {n_ctx} allows", prompt.len())));
        }
        let seq = self.seq_base(slot);
        let keep = match self.longest_cached_start(slot, head) {
            Some((k, CachedStart::Parked(i))) => {
                // The cached prompt is used up: its first k cells pass to the slot.
                self.ctx
                    .kv_cache_seq_cp(self.parked_seq(i), seq, None, Some(k as u32))
                    .map_err(|e| llama_err("reusing a cached prompt", e))?;
                self.drop_parked(i, k)?;
                k
            }
            Some((k, CachedStart::Slot(other))) => {
                // The cells stay the other slot's too: a cell is freed when no sequence holds it.
                let from = self.seq_base(other);
                self.ctx.kv_cache_seq_cp(from, seq, None, Some(k as u32)).map_err(|e| llama_err("sharing a running prompt", e))?;
                k
            }
            None => 0,
        };
        self.slots[slot].committed.extend_from_slice(&head[..keep]);
        self.make_room(head.len() - keep + 1)?;
        for chunk in head[keep..].chunks(self.options.n_batch as usize) {
            self.batch.clear();
            let start = self.slots[slot].committed.len();
            for (i, &t) in chunk.iter().enumerate() {
                self.batch.add(LlamaToken(t as i32), (start + i) as i32, &[seq], false).map_err(|e| llama_err("batch", e))?;
            }
            if let Err(e) = self.ctx.decode(&mut self.batch) {
                self.retire_slot(slot)?;
                return Err(llama_err("decoding the prompt", e));
            }
            self.slots[slot].committed.extend_from_slice(chunk);
        }
        self.slots[slot].pending = Some(last);
        Ok(keep)
    }

    /// The cached prompt or running slot whose committed tokens share the longest start with
    /// `head` (a cached prompt first among equals, as it frees a sequence id). Sliding-window
    /// layers may have dropped a long sequence's early cells; only a sequence that still has all
    /// of them qualifies.
    pub(super) fn longest_cached_start(&self, slot: usize, head: &[u32]) -> Option<(usize, CachedStart)> {
        let parked =
            (0..self.parked.len()).map(|i| (common_prefix(&self.parked[i].tokens, head), self.parked_seq(i), CachedStart::Parked(i)));
        let running = (0..self.slots.len())
            .filter(|&s| s != slot)
            .map(|s| (common_prefix(&self.slots[s].committed, head), self.seq_base(s), CachedStart::Slot(s)));
        let mut best: Option<(usize, CachedStart)> = None;
        for (keep, seq, source) in parked.chain(running) {
            if keep > best.map_or(0, |b| b.0) && self.ctx.kv_cache_seq_pos_min(seq) == 0 {
                best = Some((keep, source));
            }
        }
        best
    }

    /// End `slot`'s generation. Its tokens stay in the cache as a cached prompt (the oldest one
    /// makes way when all are taken), or are retired when the session keeps none.
    pub fn release(&mut self, slot: usize) -> Result<()> {
        self.slots[slot].pending = None;
        if self.slots[slot].committed.is_empty() {
            return Ok(());
        }
        let place = (0..self.parked.len()).min_by_key(|&i| (!self.parked[i].tokens.is_empty(), self.parked[i].parked_at));
        let Some(i) = place else {
            return self.retire_slot(slot);
        };
        let seq = self.seq_base(slot);
        let tokens = std::mem::take(&mut self.slots[slot].committed);
        if !self.parked[i].tokens.is_empty() {
            self.drop_parked(i, 0)?;
        }
        let to = self.parked_seq(i);
        self.ctx.kv_cache_seq_cp(seq, to, None, None).map_err(|e| llama_err("caching a prompt", e))?;
        self.ctx.kv_cache_seq_rm(seq, None, None).map_err(|e| llama_err("caching a prompt", e))?;
        self.releases += 1;
        self.parked[i] = Parked { tokens, parked_at: self.releases };
        Ok(())
    }

    /// After a tree step, the slot's first sequence holds its committed tokens, the pending one
    /// and the accepted path (`depth` nodes of branch `keep`), and no other of its ids holds
    /// anything. The other nodes' cells move to the retired sequence instead of being freed:
    /// llama.cpp puts new tokens into the first free cells, and a freed cell before an accepted
    /// one would put a later token ahead of an earlier one. Attention visits cells in order, so
    /// that alone would change the sums' order and the logits. Retired cells are dropped by
    /// [`Self::compact`] when the cache fills up.
    pub(super) fn keep_path(&mut self, slot: usize, n_seq: usize, base: usize, keep: i32, depth: usize) -> Result<()> {
        let (retired, first) = (self.retired_seq(), self.seq_base(slot));
        let nodes = Some(base as u32 + 1);
        for s in 0..n_seq as i32 {
            self.ctx.kv_cache_seq_cp(first + s, retired, nodes, None).map_err(|e| llama_err("retiring a draft tree", e))?;
        }
        let cut = (base + 1 + depth) as u32;
        if keep != 0 {
            self.ctx.kv_cache_seq_rm(first, nodes, None).map_err(|e| llama_err("trimming the cache", e))?;
            self.ctx.kv_cache_seq_cp(first + keep, first, nodes, Some(cut)).map_err(|e| llama_err("keeping the accepted path", e))?;
        } else {
            self.ctx.kv_cache_seq_rm(first, Some(cut), None).map_err(|e| llama_err("trimming the cache", e))?;
        }
        for s in 1..n_seq as i32 {
            self.ctx.kv_cache_seq_rm(first + s, None, None).map_err(|e| llama_err("trimming the cache", e))?;
        }
        Ok(())
    }

    /// The sequence id that holds retired cells: the last one.
    pub(super) fn retired_seq(&self) -> i32 {
        (self.options.slots * self.options.max_sequences + self.options.cached_prompts) as i32
    }

    /// Drop the retired cells and store each slot's tokens and each cached prompt again in
    /// consecutive cells in position order, as plain decoding would have left them.
    pub(super) fn compact(&mut self) -> Result<()> {
        let mut live: Vec<i32> = (0..self.slots.len()).filter(|&s| !self.slots[s].committed.is_empty()).map(|s| self.seq_base(s)).collect();
        live.extend((0..self.parked.len()).filter(|&i| !self.parked[i].tokens.is_empty()).map(|i| self.parked_seq(i)));
        let mut saved = Vec::with_capacity(live.len());
        for seq in live {
            let state = self
                .ctx
                .state_seq_get(seq, llama_cpp_2::context::session::LlamaStateSeqFlags::empty())
                .map_err(|e| llama_err("saving the cache", e))?;
            saved.push((seq, state));
        }
        self.ctx.clear_kv_cache();
        for (seq, state) in saved {
            self.ctx.state_seq_set(&state, seq).map_err(|e| llama_err("restoring the cache", e))?;
        }
        self.retired = 0;
        self.compactions += 1;
        Ok(())
    }

    /// How often rejected draft cells filled the cache and it was compacted.
    pub fn compactions(&self) -> usize {
        self.compactions
    }
}
