//! One llama.cpp context over a model, holding one or more slots (independent sequences). A
//! slot's committed tokens live in the KV cache under the first id of its range of sequence ids;
//! a draft tree is verified in one batch, one id of that range per root-to-leaf path, and the trees
//! of several slots share one batch. Finished sequences can stay cached, one id each, for later
//! prompts that start the same way; one last id holds retired cells until the cache is compacted.

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use super::sampling::{top2, Chooser};
use super::tree::DraftTree;
use crate::error::{Error, Result};
use crate::model::Model;

/// Retired cells are compacted away once there are more of them than this and than live cells.
const COMPACT_AFTER: usize = 256;

/// llama.cpp accepts at most this many sequences in one context.
pub const MAX_SEQUENCES: u32 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOptions {
    pub threads: usize,
    /// Tokens the context holds (prompt + generation + one draft tree).
    pub n_ctx: u32,
    /// Most tokens in one decode: prompt chunks, and 1 + the draft tree's nodes.
    pub n_batch: u32,
    /// Most root-to-leaf paths in a draft tree.
    pub max_sequences: u32,
    /// Independent sequences (requests) the context holds at once, each verified in the same
    /// batch as the others.
    pub slots: u32,
    /// Finished sequences kept in the cache for later prompts that start the same way (one
    /// sequence id each). `slots × max_sequences + cached_prompts` must stay below [`MAX_SEQUENCES`].
    pub cached_prompts: u32,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            n_ctx: 4096,
            n_batch: 128,
            max_sequences: 64,
            slots: 1,
            cached_prompts: 0,
        }
    }
}

/// Choose tokens down a verified tree: a token at the root; while a child carries the chosen token,
/// move there and choose again. `logits` gives the target's logits at the root (`None`) or a node.
/// Greedy: every emitted token is the argmax where it was chosen. Sampling: each token is a draw
/// from the target's processed distribution there, so the output is distributed exactly as plain
/// sampling for drafts that are not themselves sampled.
pub fn walk<'a>(tree: &DraftTree, chooser: &mut Chooser, logits: impl Fn(Option<usize>) -> &'a [f32]) -> StepOutcome {
    let mut out = StepOutcome::default();
    let mut cur: Option<usize> = None;
    loop {
        let l = logits(cur);
        let (argmax, best, second) = top2(l);
        let chosen = if chooser.params.is_greedy() { argmax } else { chooser.choose(l) };
        out.emitted.push(chosen);
        out.margins.push(best - second);
        match tree.child(cur, chosen) {
            Some(c) => {
                out.accepted.push(c);
                cur = Some(c);
            }
            None => return out,
        }
    }
}

/// What one verification step did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// The accepted draft tokens, then the token the model chose after them (the bonus).
    pub emitted: Vec<u32>,
    /// Tree nodes that were accepted, root first.
    pub accepted: Vec<usize>,
    /// For each emitted token, the gap between the best and second-best logit where it was chosen.
    pub margins: Vec<f32>,
    /// Tokens in the batch (1 + draft nodes).
    pub batch_tokens: usize,
}

/// One sequence of a session: a request's tokens.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// Tokens whose keys and values are in the cache (the slot's first sequence id).
    committed: Vec<u32>,
    /// The last token: chosen, not yet decoded. `None` for a free slot.
    pending: Option<u32>,
}

/// A finished sequence's tokens, kept in the cache under their own sequence id.
#[derive(Debug, Clone, Default)]
struct Parked {
    tokens: Vec<u32>,
    /// When it was parked (the oldest goes first when room is needed).
    parked_at: u64,
}

/// One slot's share of a batched verification step.
pub struct SlotStep<'a> {
    pub slot: usize,
    pub tree: &'a DraftTree,
    pub chooser: &'a mut Chooser,
}

pub struct Session<'m> {
    model: &'m Model,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    options: SessionOptions,
    slots: Vec<Slot>,
    /// The prompt cache: one entry per sequence id after the slots' ranges.
    parked: Vec<Parked>,
    /// Cells that hold rejected draft nodes and dropped caches (see [`Session::keep_path`]).
    retired: usize,
    /// How often the cache was compacted.
    compactions: usize,
    /// Slots released so far (a clock for evicting prompt caches).
    releases: u64,
}

/// Where a new prompt's first tokens are already in the cache.
#[derive(Debug, Clone, Copy)]
enum CachedStart {
    Parked(usize),
    Slot(usize),
}

/// How many tokens `a` and `b` share at their start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn llama_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Llama(format!("{what}: {e}"))
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model, options: SessionOptions) -> Result<Self> {
        let sequences = options.slots * options.max_sequences + options.cached_prompts;
        if options.max_sequences == 0 || options.slots == 0 || sequences >= MAX_SEQUENCES {
            return Err(Error::Invalid(format!(
                "slots × max_sequences + cached_prompts must be in 1..{MAX_SEQUENCES}, not {} × {} + {}",
                options.slots, options.max_sequences, options.cached_prompts
            )));
        }
        if options.n_batch < 2 || options.n_ctx < 8 {
            return Err(Error::Invalid("n_batch must be at least 2 and n_ctx at least 8".into()));
        }
        // llama.cpp keeps room for one output per sequence in every batch.
        if options.n_batch <= sequences {
            return Err(Error::Invalid(format!(
                "n_batch ({}) must exceed slots × max_sequences + cached_prompts ({sequences})",
                options.n_batch
            )));
        }
        let threads = options.threads.clamp(1, 512) as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(options.n_ctx))
            .with_n_batch(options.n_batch)
            .with_n_ubatch(options.n_batch)
            // One more sequence holds the retired cells.
            .with_n_seq_max(sequences + 1)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            // Sequences share one cache, so a tree's branches see the committed context.
            .with_kv_unified(true)
            // Flash attention skips masked cells and visits the rest in cell order, so a tree
            // node attends to its ancestors exactly as a chain would, whatever else is cached.
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED);
        // A V cache of another type than K keeps flash attention on its one-row-at-a-time path
        // (llama.cpp casts F32 to F16, so BF16). It accumulates in F32, where F16 V accumulates in F16.
        let params = match crate::llama::kernels() {
            crate::llama::Kernels::Exact => params.with_type_v(llama_cpp_2::context::params::KvCacheType::BF16),
            crate::llama::Kernels::Fast => params,
        };
        let ctx = model
            .llama()
            .new_context(crate::llama::backend()?, params)
            .map_err(|e| llama_err("cannot create a context (set IBID_LLAMA_LOG=1 for details)", e))?;
        Ok(Session {
            model,
            ctx,
            batch: LlamaBatch::new(options.n_batch as usize, options.max_sequences as i32),
            options,
            slots: vec![Slot::default(); options.slots as usize],
            parked: vec![Parked::default(); options.cached_prompts as usize],
            retired: 0,
            compactions: 0,
            releases: 0,
        })
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// Forget everything: an empty cache, every slot free.
    pub fn reset(&mut self) {
        self.ctx.clear_kv_cache();
        self.slots.iter_mut().for_each(|s| *s = Slot::default());
        self.parked.iter_mut().for_each(|p| *p = Parked::default());
        self.retired = 0;
    }

    /// Every token so far of slot 0: committed ones and the pending one.
    pub fn tokens(&self) -> Vec<u32> {
        self.slot_tokens(0)
    }

    /// Every token so far of `slot`.
    pub fn slot_tokens(&self, slot: usize) -> Vec<u32> {
        let s = &self.slots[slot];
        let mut t = s.committed.clone();
        t.extend(s.pending);
        t
    }

    /// The token slot 0's next step starts from (the last one so far).
    pub fn pending(&self) -> Option<u32> {
        self.slots[0].pending
    }

    /// The token `slot`'s next step starts from.
    pub fn slot_pending(&self, slot: usize) -> Option<u32> {
        self.slots[slot].pending
    }

    pub fn len(&self) -> usize {
        self.slot_len(0)
    }

    pub fn slot_len(&self, slot: usize) -> usize {
        let s = &self.slots[slot];
        s.committed.len() + usize::from(s.pending.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `slot` runs no generation (a prompt can be prefilled there).
    pub fn slot_is_free(&self, slot: usize) -> bool {
        self.slots[slot].pending.is_none()
    }

    /// A slot that runs no generation, if any.
    pub fn free_slot(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&s| self.slot_is_free(s))
    }

    /// Cells in use: every slot's committed tokens, the prompt cache and the retired cells. Cells
    /// that slots share are counted once per slot, as compaction stores them (an upper bound until then).
    fn used_cells(&self) -> usize {
        self.retired
            + self.slots.iter().map(|s| s.committed.len()).sum::<usize>()
            + self.parked.iter().map(|p| p.tokens.len()).sum::<usize>()
    }

    /// Make room for `needed` more cells: compact when the cache is full or mostly retired cells
    /// (masked, so they change no sum, but attention still scans them), and drop cached prompts,
    /// oldest first, when that is not enough.
    fn make_room(&mut self, needed: usize) -> Result<()> {
        let n_ctx = self.options.n_ctx as usize;
        let mut live = self.used_cells() - self.retired;
        if live + self.retired + needed <= n_ctx && self.retired <= live.max(COMPACT_AFTER) {
            return Ok(());
        }
        while live + needed > n_ctx {
            let oldest = (0..self.parked.len()).filter(|&i| !self.parked[i].tokens.is_empty()).min_by_key(|&i| self.parked[i].parked_at);
            let Some(oldest) = oldest else {
                return Err(Error::Invalid(format!("the context of {n_ctx} tokens is full")));
            };
            live -= self.parked[oldest].tokens.len();
            self.drop_parked(oldest, 0)?;
        }
        self.compact()
    }

    /// Move the cells of sequence `seq` from position `from` on to the retired sequence.
    fn retire_cells(&mut self, seq: i32, from: usize) -> Result<()> {
        let (retired, from) = (self.retired_seq(), Some(from as u32));
        self.ctx.kv_cache_seq_cp(seq, retired, from, None).map_err(|e| llama_err("retiring cells", e))?;
        self.ctx.kv_cache_seq_rm(seq, from, None).map_err(|e| llama_err("retiring cells", e))?;
        Ok(())
    }

    /// Retire every cell of `slot` and empty it.
    fn retire_slot(&mut self, slot: usize) -> Result<()> {
        let n = self.slots[slot].committed.len();
        self.retire_cells(self.seq_base(slot), 0)?;
        self.retired += n;
        self.slots[slot] = Slot::default();
        Ok(())
    }

    /// Forget cached prompt `i`; its cells from `kept` on are retired (the ones before were
    /// handed to a slot).
    fn drop_parked(&mut self, i: usize, kept: usize) -> Result<()> {
        let seq = self.parked_seq(i);
        let n = self.parked[i].tokens.len();
        self.retire_cells(seq, kept)?;
        self.ctx.kv_cache_seq_rm(seq, None, None).map_err(|e| llama_err("dropping a cached prompt", e))?;
        self.retired += n - kept.min(n);
        self.parked[i] = Parked::default();
        Ok(())
    }

    /// The sequence id of cached prompt `i`: after every slot's range.
    fn parked_seq(&self, i: usize) -> i32 {
        (self.options.slots * self.options.max_sequences) as i32 + i as i32
    }

    /// The first sequence id of `slot`: its committed tokens; the next ids are its tree's branches.
    fn seq_base(&self, slot: usize) -> i32 {
        (slot as u32 * self.options.max_sequences) as i32
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let n = self.model.n_vocab() as u32;
        match tokens.iter().find(|&&t| t >= n) {
            Some(t) => Err(Error::Invalid(format!("token {t} is outside the model's vocabulary of {n}"))),
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
            return Err(Error::Invalid(format!("slot {slot} does not exist; the session has {}", self.slots.len())));
        }
        if !self.slot_is_free(slot) {
            return Err(Error::Invalid(format!("slot {slot} is in use")));
        }
        let Some((&last, head)) = prompt.split_last() else {
            return Err(Error::Invalid("the prompt is empty".into()));
        };
        self.check_tokens(prompt)?;
        let n_ctx = self.options.n_ctx as usize;
        if prompt.len() + 1 > n_ctx {
            return Err(Error::Invalid(format!("the prompt has {} tokens, more than the context of {n_ctx} allows", prompt.len())));
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
    fn longest_cached_start(&self, slot: usize, head: &[u32]) -> Option<(usize, CachedStart)> {
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
            let slot = self.slots.get(w.slot).ok_or_else(|| Error::Invalid(format!("slot {} does not exist", w.slot)))?;
            if slot.pending.is_none() {
                return Err(Error::Invalid("nothing to continue: prefill a prompt first".into()));
            }
            if work[..i].iter().any(|o| o.slot == w.slot) {
                return Err(Error::Invalid(format!("slot {} appears twice in one step", w.slot)));
            }
            let tokens: Vec<u32> = (0..w.tree.len()).map(|n| w.tree.token(n)).collect();
            self.check_tokens(&tokens)?;
            if slot.committed.len() + 1 + w.tree.max_depth() + 1 > n_ctx {
                return Err(Error::Invalid(format!("the context of {n_ctx} tokens is full")));
            }
            let leaves = w.tree.leaves();
            if leaves.len() > self.options.max_sequences as usize {
                return Err(Error::Invalid(format!(
                    "a draft tree of {} paths is more than the {} sequences of this session",
                    leaves.len(),
                    self.options.max_sequences
                )));
            }
            leaves_of.push(leaves);
            batch_tokens += 1 + w.tree.len();
        }
        if batch_tokens > self.options.n_batch as usize {
            return Err(Error::Invalid(format!(
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

    /// After a tree step, the slot's first sequence holds its committed tokens, the pending one
    /// and the accepted path (`depth` nodes of branch `keep`), and no other of its ids holds
    /// anything. The other nodes' cells move to the retired sequence instead of being freed:
    /// llama.cpp puts new tokens into the first free cells, and a freed cell before an accepted
    /// one would put a later token ahead of an earlier one. Attention visits cells in order, so
    /// that alone would change the sums' order and the logits. Retired cells are dropped by
    /// [`Self::compact`] when the cache fills up.
    fn keep_path(&mut self, slot: usize, n_seq: usize, base: usize, keep: i32, depth: usize) -> Result<()> {
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
    fn retired_seq(&self) -> i32 {
        (self.options.slots * self.options.max_sequences + self.options.cached_prompts) as i32
    }

    /// Drop the retired cells and store each slot's tokens and each cached prompt again in
    /// consecutive cells in position order, as plain decoding would have left them.
    fn compact(&mut self) -> Result<()> {
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

    /// Decode slot 0's pending token and then `tokens` as one batch (or one token per batch), without
    /// keeping them; calls `read` with the logits after each of them (pending first).
    fn decode_chain(&mut self, tokens: &[u32], one_by_one: bool, mut read: impl FnMut(&[f32])) -> Result<()> {
        let pending = self.slots[0].pending.ok_or_else(|| Error::Invalid("nothing to continue: prefill a prompt first".into()))?;
        self.check_tokens(tokens)?;
        if !one_by_one && tokens.len() + 1 > self.options.n_batch as usize {
            return Err(Error::Invalid(format!("at most {} tokens fit one batch", self.options.n_batch - 1)));
        }
        let per_batch = if one_by_one { 1 } else { tokens.len() + 1 };
        let base = self.slots[0].committed.len();
        if base + tokens.len() + 2 > self.options.n_ctx as usize {
            return Err(Error::Invalid(format!("the context of {} tokens is full", self.options.n_ctx)));
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
