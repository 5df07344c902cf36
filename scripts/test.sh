#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=passive
# One release build serves the tests, the benchmarks and the demo (llama.cpp is built once).
cargo build --release --all-targets
# Test binaries run one after another; tests that load the model share one per binary.
cargo test --release -- --test-threads 2
# The server with the official OpenAI client, then under load (32 clients, 60 s, 0 errors, flat memory).
python3 scripts/test_openai.py
python3 scripts/load_test.py --clients 32 --hostile 8 --duration 60 --threads 1
