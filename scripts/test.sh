#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, checks formatting and lints,
# builds, runs every test.
#   --fast   the model-free tests only (index, queries, formats, the query server): no model
#            decodes, a few minutes after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=no
for arg in "$@"; do
  case "$arg" in
    --fast) fast=yes ;;
    *) echo "usage: scripts/test.sh [--fast]" >&2; exit 2 ;;
  esac
done
bash scripts/setup.sh
export OMP_WAIT_POLICY=passive
# Habits: one formatting, no lint warnings (rustfmt.toml; the lints in Cargo.toml).
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
if [ "$fast" = yes ]; then
  # The index crate's tests (no llama.cpp in them: seconds), every crate's unit tests, and the
  # integration tests that load no model.
  cargo test --release -p ibid-index -- --test-threads 2
  cargo test --release --workspace --lib --bins -- --test-threads 2
  cargo test --release --test query_infinigram --test infinigram_interop --test serve_http --test drafters --test shard_build \
    -- --test-threads 2
  exit 0
fi
# One release build serves the tests, the benchmarks and the demo (llama.cpp is built once).
cargo build --release --workspace --all-targets
# Test binaries run one after another; the model tests are one binary (tests/model/) sharing one
# loaded model and one lock, so no two decode at once.
cargo test --release --workspace -- --test-threads 2
# The server with the official OpenAI client, then under load (32 clients, 60 s, 0 errors, flat memory).
python3 scripts/test_openai.py
python3 scripts/load_test.py --clients 32 --hostile 8 --duration 60 --threads 1
