#!/usr/bin/env python3
"""One table from several bench_generate.py runs: per run and class, each method's median speedup
over plain and its slowest prompt.

Usage: scripts/bench_summary.py LABEL=OUT [LABEL=OUT ...]
  (OUT: a bench_generate.py --out folder, holding results.json)

Example, the README's prompt-set table:
  scripts/bench_summary.py "tuning, fresh=data/bench-tuning-fresh" "tuning, warm=data/bench-tuning-warm" \\
                           "held-out, fresh=data/bench-heldout-fresh" "held-out, warm=data/bench-heldout-warm"
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_generate import ROOT, die, md_table  # noqa: E402


def main():
    runs = sys.argv[1:]
    if not runs or any('=' not in r for r in runs):
        die('give LABEL=OUT pairs (see --help)' if runs and runs[0] != '--help' else __doc__)
    rows = []
    methods = []
    loaded = []
    for run in runs:
        label, out = run.split('=', 1)
        path = os.path.join(ROOT, out, 'results.json')
        try:
            summary = json.load(open(path))['summary']
        except (OSError, ValueError, KeyError) as e:
            die(f'{path}: {e}')
        loaded.append((label, summary))
        for cls in summary.values():
            methods += [m for m in cls if m != 'ibid plain' and m not in methods]
    for label, summary in loaded:
        for cls, by_method in summary.items():
            row = [label, cls]
            for m in methods:
                s = by_method.get(m)
                row.append(f'{s["speedup"]:.2f}× / {s["slowest"]:.2f}×' if s and 'slowest' in s else '–')
            rows.append(row)
    header = ['prompt set, ibid home', 'class'] + [f'{m.removeprefix("ibid ")}: median / slowest' for m in methods]
    print(md_table(header, rows))


if __name__ == '__main__':
    main()
