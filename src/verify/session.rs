//! One llama.cpp context over a model: the committed tokens live in the KV cache as sequence 0, and
//! a draft tree is verified in one batch, one sequence id per root-to-leaf path.

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use super::sampling::{top2, Chooser};
use super::tree::DraftTree;
use crate::error::{Error, Result};
use crate::model::Model;

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
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            n_ctx: 4096,
            n_batch: 128,
            max_sequences: 64,
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
        let chosen = chooser.choose(l);
        let (_, best, second) = top2(l);
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

pub struct Session<'m> {
    model: &'m Model,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    options: SessionOptions,
    /// Tokens whose keys and values are in the cache (sequence 0).
    committed: Vec<u32>,
    /// The last token: chosen, not yet decoded.
    pending: Option<u32>,
    /// Cells that hold rejected draft nodes (see [`Session::keep_path`]).
    retired: usize,
    /// How often the cache was compacted.
    compactions: usize,
}

fn llama_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Llama(format!("{what}: {e}"))
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model, options: SessionOptions) -> Result<Self> {
        if options.max_sequences == 0 || options.max_sequences >= MAX_SEQUENCES {
            return Err(Error::Invalid(format!("max_sequences must be in 1..{MAX_SEQUENCES}")));
        }
        if options.n_batch < 2 || options.n_ctx < 8 {
            return Err(Error::Invalid("n_batch must be at least 2 and n_ctx at least 8".into()));
        }
        let threads = options.threads.clamp(1, 512) as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(options.n_ctx))
            .with_n_batch(options.n_batch)
            .with_n_ubatch(options.n_batch)
            // One more sequence holds the retired draft cells.
            .with_n_seq_max(options.max_sequences + 1)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            // Sequences share one cache, so a tree's branches see the committed context.
            .with_kv_unified(true)
            // Flash attention skips masked cells and visits the rest in cell order, so a tree
            // node attends to its ancestors exactly as a chain would.
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
            committed: Vec::new(),
            pending: None,
            retired: 0,
            compactions: 0,
        })
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// Forget everything: an empty cache.
    pub fn reset(&mut self) {
        self.ctx.clear_kv_cache();
        self.committed.clear();
        self.pending = None;
        self.retired = 0;
    }

    /// Every token so far: committed ones and the pending one.
    pub fn tokens(&self) -> Vec<u32> {
        let mut t = self.committed.clone();
        t.extend(self.pending);
        t
    }

    /// The token the next step starts from (the last one so far).
    pub fn pending(&self) -> Option<u32> {
        self.pending
    }

    pub fn len(&self) -> usize {
        self.committed.len() + usize::from(self.pending.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let n = self.model.n_vocab() as u32;
        match tokens.iter().find(|&&t| t >= n) {
            Some(t) => Err(Error::Invalid(format!("token {t} is outside the model's vocabulary of {n}"))),
            None => Ok(()),
        }
    }

    /// Start from `prompt`: every token but the last is decoded in chunks of `n_batch` (the same
    /// chunks whatever comes next, so plain and speculative runs see the same cache); the last one
    /// becomes the pending token.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        self.reset();
        let Some((&last, head)) = prompt.split_last() else {
            return Err(Error::Invalid("the prompt is empty".into()));
        };
        self.check_tokens(prompt)?;
        if prompt.len() + 1 > self.options.n_ctx as usize {
            return Err(Error::Invalid(format!(
                "the prompt has {} tokens, more than the context of {} allows",
                prompt.len(),
                self.options.n_ctx
            )));
        }
        for chunk in head.chunks(self.options.n_batch as usize) {
            self.batch.clear();
            let start = self.committed.len();
            for (i, &t) in chunk.iter().enumerate() {
                self.batch
                    .add(LlamaToken(t as i32), (start + i) as i32, &[0], false)
                    .map_err(|e| llama_err("batch", e))?;
            }
            self.ctx.decode(&mut self.batch).map_err(|e| llama_err("decoding the prompt", e))?;
            self.committed.extend_from_slice(chunk);
        }
        self.pending = Some(last);
        Ok(())
    }

    /// Verify a draft tree in one batch: the pending token and every node, each node at position
    /// `context length + depth`, tagged with the sequence id of every root-to-leaf path through it.
    /// `inspect` sees the logits of the root (`None`) and of each node before the walk. The walk
    /// chooses a token at the root; while a child carries the chosen token it moves there and
    /// chooses again. The cache keeps exactly the accepted path.
    pub fn step(
        &mut self,
        tree: &DraftTree,
        chooser: &mut Chooser,
        mut inspect: impl FnMut(Option<usize>, &[f32]),
    ) -> Result<StepOutcome> {
        let pending = self.pending.ok_or_else(|| Error::Invalid("nothing to continue: prefill a prompt first".into()))?;
        let tokens: Vec<u32> = (0..tree.len()).map(|i| tree.token(i)).collect();
        self.check_tokens(&tokens)?;
        let base = self.committed.len();
        if base + 1 + tree.max_depth() + 1 > self.options.n_ctx as usize {
            return Err(Error::Invalid(format!("the context of {} tokens is full", self.options.n_ctx)));
        }
        if 1 + tree.len() > self.options.n_batch as usize {
            return Err(Error::Invalid(format!(
                "a draft tree of {} nodes does not fit a batch of {}",
                tree.len(),
                self.options.n_batch
            )));
        }
        if base + self.retired + 1 + tree.len() > self.options.n_ctx as usize {
            self.compact()?;
        }
        if base + 1 + tree.len() > self.options.n_ctx as usize {
            return Err(Error::Invalid(format!("the context of {} tokens is full", self.options.n_ctx)));
        }
        let leaves = tree.leaves();
        let n_seq = leaves.len().max(1);
        if n_seq > self.options.max_sequences as usize {
            return Err(Error::Invalid(format!(
                "a draft tree of {} paths is more than the {} sequences of this session",
                leaves.len(),
                self.options.max_sequences
            )));
        }
        // Sequence ids of each node: the leaves below it. Nodes are stored parents first.
        let mut seqs: Vec<Vec<i32>> = vec![Vec::new(); tree.len()];
        for (s, &leaf) in leaves.iter().enumerate() {
            let mut cur = Some(leaf);
            while let Some(n) = cur {
                seqs[n].push(s as i32);
                cur = tree.parent(n);
            }
        }
        for s in 1..n_seq {
            self.ctx
                .copy_kv_cache_seq(0, s as i32, None, None)
                .map_err(|e| llama_err("sharing the context with a branch", e))?;
        }
        let all: Vec<i32> = (0..n_seq as i32).collect();
        self.batch.clear();
        self.batch.add(LlamaToken(pending as i32), base as i32, &all, true).map_err(|e| llama_err("batch", e))?;
        for (i, &t) in tokens.iter().enumerate() {
            self.batch
                .add(LlamaToken(t as i32), (base + tree.depth(i)) as i32, &seqs[i], true)
                .map_err(|e| llama_err("batch", e))?;
        }
        self.ctx.decode(&mut self.batch).map_err(|e| llama_err("decoding a draft tree", e))?;

        inspect(None, self.ctx.get_logits_ith(0));
        for i in 0..tree.len() {
            inspect(Some(i), self.ctx.get_logits_ith(i as i32 + 1));
        }
        let ctx = &self.ctx;
        let mut out = walk(tree, chooser, |node| ctx.get_logits_ith(node.map_or(0, |c| c as i32 + 1)));
        out.batch_tokens = 1 + tree.len();
        let cur = out.accepted.last().copied();

        let keep = cur.map_or(0, |c| seqs[c][0]);
        if !tree.is_empty() {
            self.keep_path(n_seq, base, keep, out.accepted.len())?;
            self.retired += tree.len() - out.accepted.len();
        }
        self.committed.push(pending);
        self.committed.extend(out.accepted.iter().map(|&n| tree.token(n)));
        self.pending = out.emitted.last().copied();
        Ok(out)
    }

    /// After a tree step, sequence 0 holds the committed tokens, the pending one and the accepted
    /// path (`depth` nodes of sequence `keep`), and nothing else does. The other nodes' cells move
    /// to the retired sequence instead of being freed: llama.cpp puts new tokens into the first
    /// free cells, and a freed cell before an accepted one would put a later token ahead of an
    /// earlier one. Attention visits cells in order, so that alone would change the sums' order
    /// and the logits. Retired cells are dropped by [`Self::compact`] when the cache fills up.
    fn keep_path(&mut self, n_seq: usize, base: usize, keep: i32, depth: usize) -> Result<()> {
        let retired = self.retired_seq();
        let nodes = Some(base as u32 + 1);
        for s in 0..n_seq as i32 {
            self.ctx.kv_cache_seq_cp(s, retired, nodes, None).map_err(|e| llama_err("retiring a draft tree", e))?;
        }
        let cut = (base + 1 + depth) as u32;
        if keep != 0 {
            self.ctx.kv_cache_seq_rm(0, nodes, None).map_err(|e| llama_err("trimming the cache", e))?;
            self.ctx.kv_cache_seq_cp(keep, 0, nodes, Some(cut)).map_err(|e| llama_err("keeping the accepted path", e))?;
        } else {
            self.ctx.kv_cache_seq_rm(0, Some(cut), None).map_err(|e| llama_err("trimming the cache", e))?;
        }
        for s in 1..n_seq as i32 {
            self.ctx.kv_cache_seq_rm(s, None, None).map_err(|e| llama_err("trimming the cache", e))?;
        }
        Ok(())
    }

    /// The sequence id that holds retired draft cells: one past the branches.
    fn retired_seq(&self) -> i32 {
        self.options.max_sequences as i32
    }

    /// Drop the retired cells and store sequence 0 again in cells 0, 1, 2, … in position order,
    /// as plain decoding would have left it.
    fn compact(&mut self) -> Result<()> {
        let state = self
            .ctx
            .state_seq_get(0, llama_cpp_2::context::session::LlamaStateSeqFlags::empty())
            .map_err(|e| llama_err("saving the cache", e))?;
        self.ctx.clear_kv_cache();
        self.ctx.state_seq_set(&state, 0).map_err(|e| llama_err("restoring the cache", e))?;
        self.retired = 0;
        self.compactions += 1;
        Ok(())
    }

    /// How often rejected draft cells filled the cache and it was compacted.
    pub fn compactions(&self) -> usize {
        self.compactions
    }

    /// Decode the pending token and then `tokens` as one batch (or one token per batch), without
    /// keeping them; calls `read` with the logits after each of them (pending first).
    fn decode_chain(&mut self, tokens: &[u32], one_by_one: bool, mut read: impl FnMut(&[f32])) -> Result<()> {
        let pending = self.pending.ok_or_else(|| Error::Invalid("nothing to continue: prefill a prompt first".into()))?;
        self.check_tokens(tokens)?;
        if !one_by_one && tokens.len() + 1 > self.options.n_batch as usize {
            return Err(Error::Invalid(format!("at most {} tokens fit one batch", self.options.n_batch - 1)));
        }
        let per_batch = if one_by_one { 1 } else { tokens.len() + 1 };
        let base = self.committed.len();
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
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(base as u32), None)
            .map_err(|e| llama_err("trimming the cache", e))?;
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
