#!/usr/bin/env bash
# The adversarial suite at full size: over a million inputs (index opening, both servers' routes),
# one line per target: inputs, panics, wrong answers, the slowest answer, answers by status.
# Usage: scripts/fuzz.sh [SCALE]   (the test suite runs it at scale 1: about 74,000 inputs)
set -euo pipefail
cd "$(dirname "$0")/.."
# The model server's routes run in the model test binary (over its one loaded model).
{
    IBID_FUZZ_SCALE="${1:-14}" IBID_LOG=warn cargo test --release --test fuzz -- --nocapture --test-threads 1
    IBID_FUZZ_SCALE="${1:-14}" IBID_LOG=warn cargo test --release --test model fuzz_model_server -- --nocapture --test-threads 1
} 2>&1 | grep -aE 'fuzz \||^test result|panicked' | sed -E 's/^test [a-z_]+ \.\.\. //'
