//! The one llama.cpp backend of the process. llama.cpp may be initialised only once, so every
//! user (tokenizer, verifier) goes through here. It also fixes which CPU kernels the process uses.

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

use crate::error::{Error, Result};

/// Which of llama.cpp's CPU kernels verification batches run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Every row of a batch gets the logits it would get alone, bit for bit, whatever the batch
    /// size: speculative greedy output is token-identical to plain greedy output by construction.
    /// The tiled K-quant matrix kernel (batches of 8 or more) is off, the V cache is BF16 (so
    /// flash attention never takes its split-KV path for one token or its tiled path for 64 or
    /// more), and the build leaves weights unpacked (`GGML_CPU_REPACK=OFF`, `.cargo/config.toml`).
    #[default]
    Exact,
    /// llama.cpp's defaults: large batches are cheaper, but a row's logits depend on the batch
    /// size, so near-ties can split speculative from plain output.
    Fast,
}

impl Kernels {
    /// A short name for logs and cache file names; it also says whether the weights were
    /// repacked at build time (`GGML_CPU_REPACK`).
    pub fn tag(self) -> String {
        let mode = match self {
            Kernels::Exact => "exact",
            Kernels::Fast => "fast",
        };
        if repacked_build() {
            format!("{mode}-repack")
        } else {
            mode.to_string()
        }
    }
}

/// Whether llama.cpp was built to repack quantized weights for batched kernels.
pub fn repacked_build() -> bool {
    !matches!(option_env!("GGML_CPU_REPACK"), Some("OFF" | "off" | "0"))
}

static KERNELS: OnceLock<Kernels> = OnceLock::new();
static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();

/// Choose the kernels before llama.cpp starts; `false` when it has started with others already.
pub fn set_kernels(kernels: Kernels) -> bool {
    *KERNELS.get_or_init(|| kernels) == kernels
}

/// The kernels this process uses.
pub fn kernels() -> Kernels {
    *KERNELS.get_or_init(Kernels::default)
}

/// The process-wide llama.cpp backend. llama.cpp's own log lines are silenced unless
/// `IBID_LLAMA_LOG` is set, so they do not mix with our output.
pub fn backend() -> Result<&'static LlamaBackend> {
    BACKEND
        .get_or_init(|| {
            // ggml reads this switch once, at its first matrix product; it has no API. Setting it
            // here, before llama.cpp starts, is the earliest point a library user passes through.
            if kernels() == Kernels::Exact {
                std::env::set_var("GGML_CPU_TILED_MM", "0");
            }
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            if std::env::var_os("IBID_LLAMA_LOG").is_none() {
                backend.void_logs();
            }
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| Error::Tokenizer(format!("cannot start llama.cpp: {e}")))
}
