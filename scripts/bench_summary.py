#!/usr/bin/env python3
"""One table from several bench_generate.py runs: per run and class, each method's median speedup
over plain and its slowest prompt, measured and modelled.

Usage: scripts/bench_summary.py [--curve COST.json] LABEL=OUT [LABEL=OUT ...]
  (OUT: a bench_generate.py --out folder, holding results.json and logs/)

Modelled speedup: the run's verification steps priced on one cost curve (COST.json, an `ibid
calibrate` file; default: the one in the first OUT/home/ibid that has one, else ~/.cache/ibid):
tokens ÷ Σ relative cost of each step's batch (the budgets each step chose, from the run's
--report). Timing noise cannot move it; it leaves out what the curve does not see (drafting
itself, walking the tree), which `IBID_LOG=ibid=debug` puts at 0.02–0.3 ms of a 16 ms step here.

Example, the README's prompt-set table:
  scripts/bench_summary.py "tuning, fresh=data/bench-tuning-fresh" "tuning, warm=data/bench-tuning-warm" \\
                           "held-out, fresh=data/bench-heldout-fresh" "held-out, warm=data/bench-heldout-warm"
"""

import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, cost_curve, die, md_table, repo_relative  # noqa: E402


def modelled(report, relative):
    """Tokens per unit of modelled time, from a --report's budgets (one per drafting step)."""
    budgets = {int(k): v for k, v in report.get('budgets', {}).items()}
    drafted_steps = sum(budgets.values())
    cost = sum(v * relative(k + 1) for k, v in budgets.items()) + max(report['steps'] - drafted_steps, 0)
    return report['tokens'] / cost if cost else None


def main():
    args = sys.argv[1:]
    curve = None
    if args[:1] == ['--curve']:
        curve, args = args[1], args[2:]
    runs = args
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
    if curve is None:
        found = [f for run in runs for f in sorted(glob.glob(os.path.join(ROOT, run.split('=', 1)[1], 'home', 'ibid', 'cost-*.json')))]
        found += sorted(glob.glob(os.path.expanduser('~/.cache/ibid/cost-*-t2-*.json')))
        if not found:
            die('no cost curve found: give --curve COST.json')
        curve = found[0]
    relative = cost_curve(curve)
    for (label, summary), run in zip(loaded, runs):
        logs = os.path.join(ROOT, run.split('=', 1)[1], 'logs')
        for cls, by_method in summary.items():
            row = [label, cls]
            for m in methods:
                s = by_method.get(m)
                row.append(f'{s["speedup"]:.2f}× / {s["slowest"]:.2f}×' if s and 'slowest' in s else '–')
            for m in methods:
                ratios = []
                for f in sorted(glob.glob(os.path.join(logs, f'{cls}-*-ibid-{m.removeprefix("ibid ")}.json'))):
                    if f.count('-ibid-') != 1:
                        continue
                    value = modelled(json.load(open(f)), relative)
                    if value is not None:
                        ratios.append(value)
                row.append(f'{statistics.median(ratios):.2f}× / {min(ratios):.2f}×' if ratios else '–')
            rows.append(row)
    header = (['prompt set, ibid home', 'class'] + [f'{m.removeprefix("ibid ")}: measured' for m in methods]
              + [f'{m.removeprefix("ibid ")}: modelled' for m in methods])
    print(md_table(header, rows))
    print(f'\n(measured: median / slowest prompt; modelled on {repo_relative(curve)})')


if __name__ == '__main__':
    main()
