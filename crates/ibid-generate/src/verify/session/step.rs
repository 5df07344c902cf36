//! A verification step: every slot's tree in one batch, each walk choosing down its tree, the
//! cache left holding exactly each slot's accepted path.

use super::*;

impl<'m> Session<'m> {
    /// Verify a draft tree for slot 0 in one batch: see [`Self::step_slots`].
    pub fn step(&mut self, tree: &DraftTree, chooser: &mut Chooser, mut inspect: impl FnMut(Option<usize>, &[f32])) -> Result<StepOutcome> {
        let mut work = [SlotStep { slot: 0, tree, chooser }];
        let mut out = self.step_slots(&mut work, |_, node, logits| inspect(node, logits))?;
        Ok(out.remove(0))
    }

    /// Verify the draft trees of several slots in one batch: per slot, its pending token and every
    /// node, each node at position `slot length + depth`, tagged with the sequence id of every
    /// root-to-leaf path through it (ids of that slot's range). `inspect` sees the logits of each
    /// slot's root (`None`) and of each node, by index into `work`, before the walks. Each walk
    /// chooses a token at the root; while a child carries the chosen token it moves there and
    /// chooses again. The cache keeps exactly each slot's accepted path. A row's logits do not
    /// depend on the rest of its batch (exact kernels), so each slot's output is what it would
    /// have been alone.
    pub fn step_slots(
        &mut self,
        work: &mut [SlotStep<'_>],
        mut inspect: impl FnMut(usize, Option<usize>, &[f32]),
    ) -> Result<Vec<StepOutcome>> {
        let n_ctx = self.options.n_ctx as usize;
        let mut batch_tokens = 0;
        let mut leaves_of: Vec<Vec<usize>> = Vec::with_capacity(work.len());
        for (i, w) in work.iter().enumerate() {
            let slot = self.slots.get(w.slot).ok_or_else(|| Error::Session(format!("slot {} does not exist", w.slot)))?;
            if slot.pending.is_none() {
                return Err(Error::Session("nothing to continue: prefill a prompt first".into()));
            }
            if work[..i].iter().any(|o| o.slot == w.slot) {
                return Err(Error::Session(format!("slot {} appears twice in one step", w.slot)));
            }
            let tokens: Vec<u32> = (0..w.tree.len()).map(|n| w.tree.token(n)).collect();
            self.check_tokens(&tokens)?;
            if slot.committed.len() + 1 + w.tree.max_depth() + 1 > n_ctx {
                return Err(Error::ContextFull { n_ctx, generated: None });
            }
            let leaves = w.tree.leaves();
            if leaves.len() > self.options.max_sequences as usize {
                return Err(Error::Session(format!(
                    "a draft tree of {} paths is more than the {} sequences of this session",
                    leaves.len(),
                    self.options.max_sequences
                )));
            }
            leaves_of.push(leaves);
            batch_tokens += 1 + w.tree.len();
        }
        if batch_tokens > self.options.n_batch as usize {
            return Err(Error::Session(format!(
                "draft trees of {} nodes in all do not fit a batch of {}",
                batch_tokens - work.len(),
                self.options.n_batch
            )));
        }
        self.make_room(batch_tokens)?;

        self.batch.clear();
        // Per slot: its first row in the batch, its paths' count, and each node's sequence ids.
        let mut layout: Vec<(usize, usize, Vec<Vec<i32>>)> = Vec::with_capacity(work.len());
        for (w, leaves) in work.iter().zip(&leaves_of) {
            let (tree, base_seq) = (w.tree, self.seq_base(w.slot));
            let slot = &self.slots[w.slot];
            let base = slot.committed.len();
            let n_seq = leaves.len().max(1);
            // Sequence ids of each node: the leaves below it. Nodes are stored parents first.
            let mut seqs: Vec<Vec<i32>> = vec![Vec::new(); tree.len()];
            for (s, &leaf) in leaves.iter().enumerate() {
                let mut cur = Some(leaf);
                while let Some(n) = cur {
                    seqs[n].push(base_seq + s as i32);
                    cur = tree.parent(n);
                }
            }
            for s in 1..n_seq as i32 {
                self.ctx
                    .copy_kv_cache_seq(base_seq, base_seq + s, None, None)
                    .map_err(|e| llama_err("sharing the context with a branch", e))?;
            }
            let first_row = self.batch.n_tokens() as usize;
            let all: Vec<i32> = (base_seq..base_seq + n_seq as i32).collect();
            let pending = slot.pending.expect("checked above");
            self.batch.add(LlamaToken(pending as i32), base as i32, &all, true).map_err(|e| llama_err("batch", e))?;
            for (n, node_seqs) in seqs.iter().enumerate() {
                self.batch
                    .add(LlamaToken(tree.token(n) as i32), (base + tree.depth(n)) as i32, node_seqs, true)
                    .map_err(|e| llama_err("batch", e))?;
            }
            layout.push((first_row, n_seq, seqs));
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            for (w, (_, n_seq, _)) in work.iter().zip(&layout) {
                let base_seq = self.seq_base(w.slot);
                let base = self.slots[w.slot].committed.len() as u32;
                for s in 0..*n_seq as i32 {
                    let _ = self.ctx.kv_cache_seq_rm(base_seq + s, Some(if s == 0 { base } else { 0 }), None);
                }
            }
            return Err(llama_err("decoding a draft tree", e));
        }

        let mut outcomes = Vec::with_capacity(work.len());
        for (i, (w, (first_row, n_seq, seqs))) in work.iter_mut().zip(&layout).enumerate() {
            let row = |node: Option<usize>| (first_row + node.map_or(0, |c| c + 1)) as i32;
            let tree = w.tree;
            inspect(i, None, self.ctx.get_logits_ith(row(None)));
            for n in 0..tree.len() {
                inspect(i, Some(n), self.ctx.get_logits_ith(row(Some(n))));
            }
            let ctx = &self.ctx;
            let mut out = walk(tree, w.chooser, |node| ctx.get_logits_ith(row(node)));
            out.batch_tokens = 1 + tree.len();
            let base = self.slots[w.slot].committed.len();
            if !tree.is_empty() {
                let keep = out.accepted.last().map_or(0, |&c| seqs[c][0] - self.seq_base(w.slot));
                self.keep_path(w.slot, *n_seq, base, keep, out.accepted.len())?;
                self.retired += tree.len() - out.accepted.len();
            }
            let slot = &mut self.slots[w.slot];
            slot.committed.push(slot.pending.take().expect("checked above"));
            slot.committed.extend(out.accepted.iter().map(|&n| tree.token(n)));
            slot.pending = out.emitted.last().copied();
            outcomes.push(out);
        }
        Ok(outcomes)
    }
}
