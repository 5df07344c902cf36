#!/usr/bin/env bash
# The main job end to end on the embedded default: installs what it needs, assembles a ~100 MB
# real corpus (Linux and Python docs, GCIDE, the CPython standard library), indexes it with the
# Gemma 3 270M tokenizer, and answers a few n-gram queries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
MODEL=$(bash scripts/model_path.sh)
bash scripts/corpus.sh data/corpus
IBID=target/release/ibid
INDEX=index/corpus

echo "== building $INDEX (Gemma 3 tokenizer) =="
$IBID build data/corpus -o "$INDEX" --tokenizer "gguf:$MODEL" --force
$IBID info "$INDEX" | head -12

echo "== count =="
$IBID count "$INDEX" " def __init__(self" --format table
echo "== next-token distribution =="
$IBID ntd "$INDEX" "import numpy as" --format table | head -12
echo "== ∞-gram: longest matching suffix, then its next tokens =="
$IBID infgram "$INDEX" "Tell me about the Linux kernel's memory management and the page" --format table | head -12
echo "== CNF: documents that mention both =="
$IBID cnf "$INDEX" "mutex AND deadlock OR lockdep" --format table
echo "== a document containing a phrase =="
$IBID docs "$INDEX" " the Python Software Foundation" --maxnum 1 --max-disp-len 60 --seed 1 --format table

echo "== generation: plain decoding vs the default drafters (the running context) vs all drafters (context, index, token recycling); identical output by construction =="
PROMPT_FILE=$(mktemp)
python3 - "$PROMPT_FILE" <<'PY'
import sys, sysconfig, pathlib
src = (pathlib.Path(sysconfig.get_paths()["stdlib"]) / "colorsys.py").read_text()[:1200]
pathlib.Path(sys.argv[1]).write_text(src + "\n\n# The same module again, unchanged:\n\n" + src[:200])
PY
for mode in none default all; do
  $IBID generate --model "$MODEL" --index "$INDEX" --prompt-file "$PROMPT_FILE" --max-tokens 96 \
    --draft "$mode" --stats > "data/demo-$mode.txt" 2> "data/demo-$mode.stats"
  python3 -c "import json,sys; s=json.loads(open(sys.argv[1]).read().splitlines()[-1]); c=s.get('calibrate_s'); print(f\"{sys.argv[2]:>6}: {s['tokens_per_s']:.1f} tokens/s, {s['tokens_per_step']:.2f} tokens per step\" + (f\" (first measured this machine's cost curve: {c:.1f} s)\" if c else ''))" "data/demo-$mode.stats" "$mode"
done
if cmp -s data/demo-none.txt data/demo-default.txt && cmp -s data/demo-none.txt data/demo-all.txt; then echo "outputs identical"; else echo "outputs differ: a defect, please report it (README, Exactness)"; exit 1; fi
head -c 400 data/demo-all.txt; echo
rm -f "$PROMPT_FILE"
