//! One llama.cpp context over a model, holding one or more slots (independent sequences). A
//! slot's committed tokens live in the KV cache under the first id of its range of sequence ids;
//! a draft tree is verified in one batch, one id of that range per root-to-leaf path, and the trees
//! of several slots share one batch. Finished sequences can stay cached, one id each, for later
//! prompts that start the same way; one last id holds retired cells until the cache is compacted.

mod cache;
mod measure;
mod step;

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
            return Err(Error::Argument(format!(
                "slots × max_sequences + cached_prompts must be in 1..{MAX_SEQUENCES}, not {} × {} + {}",
                options.slots, options.max_sequences, options.cached_prompts
            )));
        }
        if options.n_batch < 2 || options.n_ctx < 8 {
            return Err(Error::Argument("n_batch must be at least 2 and n_ctx at least 8".into()));
        }
        // llama.cpp keeps room for one output per sequence in every batch.
        if options.n_batch <= sequences {
            return Err(Error::Argument(format!(
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
}
