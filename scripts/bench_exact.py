#!/usr/bin/env python3
"""What exactness costs: ibid's exact kernels vs llama.cpp's default ones, in one run.

Usage:
  scripts/bench_exact.py [--prompts 10] [--max-tokens 128] [--threads 2] [--classes code,chat,copy]
                         [--out data/bench-exact]

Configurations (each runs the same prompts, interleaved prompt by prompt):
  default   llama.cpp's defaults: built with GGML_CPU_REPACK=ON (the environment wins over
            .cargo/config.toml) into target/default-kernels, run with --fast-kernels
  exact     the repository's build and ibid's default: every row of a batch gets the logits it
            would get alone
  fast      the repository's build (weights not repacked) with --fast-kernels: tiled K-quant
            matrix kernel and F16 V cache again

For each configuration:
  1. the cost curve: ibid calibrate --sizes 1,2,3,4,6,8,12,16,24,32,48,64 (one batch of N tokens,
     logits for all, 512 tokens in the cache), ms at N = 1 and cost relative to N = 1;
  2. the generation benchmark's ibid methods on bench_generate.py's prompts and indexes: plain
     (--draft none) and all (the default drafters), greedy, --max-tokens new tokens; tokens/s
     (median per class), speedup over plain, and how many outputs equal plain output token for
     token, and how many plain outputs equal the default kernels' plain output (kernels that sum
     in another order decide near-ties differently, so greedy text itself differs between
     configurations, and so does how much of it can be drafted). The recycling matrix is not saved (--no-recycle-save), so every configuration drafts
     from the same matrix.

Writes OUT/results.md (printed) and OUT/results.json; logs in OUT/logs/.
"""

import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_generate as bg  # noqa: E402
from benchlib import IBID, ROOT, die, logger, md_table, write_results  # noqa: E402

SIZES = '1,2,3,4,6,8,12,16,24,32,48,64'
DEFAULT_DIR = os.path.join(ROOT, 'target', 'default-kernels')
CONFIGS = {
    'default': (os.path.join(DEFAULT_DIR, 'release', 'ibid'), ['--fast-kernels']),
    'exact': (IBID, []),
    'fast': (IBID, ['--fast-kernels']),
}

log = logger('bench_exact')


def build_default():
    """ibid linked to llama.cpp built with its default CPU settings."""
    env = dict(os.environ, GGML_CPU_REPACK='ON')
    bg.sh(['cargo', 'build', '--release', '--quiet', '--bin', 'ibid', '--target-dir', DEFAULT_DIR], env=env)


def calibrate(name, model, args):
    binary, extra = CONFIGS[name]
    cmd = [binary, *extra, '--threads', str(args.threads), 'calibrate', '--model', model, '--sizes', SIZES]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        die(f'calibrate ({name}) failed:\n{out.stderr[-2000:]}')
    ms = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 3 and cells[0].isdigit():
            ms[int(cells[0])] = float(cells[1])
    if 1 not in ms:
        die(f'no cost table from calibrate ({name}):\n{out.stdout[-2000:]}')
    return ms


def generate(name, model, p, method, args, logs):
    binary, extra = CONFIGS[name]
    prefix = os.path.join(logs, f'{p["id"]}-{name}-{method}')
    report = prefix + '.json'
    cmd = [binary, *extra, '--threads', str(args.threads), 'generate', '--model', model, '--prompt-file',
           p['path'], '--max-tokens', str(args.max_tokens), '--index', p['index'],
           '--report', report, '--no-recycle-save', '--draft', 'none' if method == 'plain' else method]
    bg.run_logged(cmd, prefix)
    r = json.load(open(report))
    return {'tps': r['tokens_per_s'], 'per_step': r['tokens_per_step'], 'token_ids': r['token_ids'],
            'kernels': r.get('kernels')}


def main():
    args = bg.run_arguments(__doc__, 'data/bench-exact').parse_args()
    args.no_llama, args.calibrate = True, False
    out = os.path.join(ROOT, args.out)
    logs = os.path.join(out, 'logs')
    os.makedirs(logs, exist_ok=True)
    model = bg.ensure_setup(args)
    build_default()
    classes = args.classes.split(',')
    prompts = bg.write_prompts(classes, args.prompts, out)

    curves = {}
    for name in CONFIGS:
        curves[name] = calibrate(name, model, args)
        log(name, 'cost curve', curves[name])
    runs = {p['id']: {} for p in prompts}
    for p in prompts:
        for name in CONFIGS:
            for method in ('plain', 'all'):
                runs[p['id']][(name, method)] = generate(name, model, p, method, args, logs)
        log(p['id'], ' '.join(f'{n}/{m}={r["tps"]:.1f}' for (n, m), r in runs[p['id']].items()))

    sizes = sorted(curves['default'])
    rows = [[n] + [f'{curves[c][n] / curves[c][1]:.2f}' for c in CONFIGS] for n in sizes]
    rows.insert(0, ['ms at N = 1'] + [f'{curves[c][1]:.1f}' for c in CONFIGS])
    cost_table = md_table(['N'] + [f'{c}: cost / N=1' for c in CONFIGS], rows)

    rows, summary = [], {}
    for cls in classes:
        ids = [p['id'] for p in prompts if p['class'] == cls]
        summary[cls] = {}
        for name in CONFIGS:
            plain = [runs[i][(name, 'plain')] for i in ids]
            drafted = [runs[i][(name, 'all')] for i in ids]
            s = {
                'plain_tps': statistics.median(r['tps'] for r in plain),
                'all_tps': statistics.median(r['tps'] for r in drafted),
                'speedup': statistics.median(d['tps'] / p['tps'] for p, d in zip(plain, drafted)),
                'per_step': statistics.mean(r['per_step'] for r in drafted),
                'same': sum(d['token_ids'] == p['token_ids'] for p, d in zip(plain, drafted)),
                'same_text_as_default': sum(runs[i][(name, 'plain')]['token_ids'] == runs[i][('default', 'plain')]['token_ids']
                                            for i in ids),
            }
            summary[cls][name] = s
            rows.append([cls, name, f'{s["plain_tps"]:.1f}', f'{s["all_tps"]:.1f}', f'{s["speedup"]:.2f}×',
                         f'{s["per_step"]:.2f}', f'{s["same"]}/{len(ids)}',
                         f'{s["same_text_as_default"]}/{len(ids)}'])
    gen_table = md_table(['class', 'kernels', 'plain tokens/s', 'all tokens/s', 'all / plain',
                          'tokens per step', 'all = plain', 'plain = default plain'], rows)
    def same_text_ratio(ids, name):
        # all-drafts speed against the default kernels' on prompts where both plain texts agree:
        # the same text to draft, so only the kernels differ
        r = [runs[i][(name, 'all')]['tps'] / runs[i][('default', 'all')]['tps'] for i in ids
             if runs[i][(name, 'plain')]['token_ids'] == runs[i][('default', 'plain')]['token_ids']]
        return (f'{statistics.median(r):.2f} ({len(r)})' if r else '–'), r

    ratio_rows, pooled = [], {'exact': [], 'fast': []}
    for cls in classes:
        ids = [p['id'] for p in prompts if p['class'] == cls]
        row = [cls, f'{summary[cls]["exact"]["plain_tps"] / summary[cls]["default"]["plain_tps"]:.2f}',
               f'{summary[cls]["exact"]["all_tps"] / summary[cls]["default"]["all_tps"]:.2f}']
        for name in ('exact', 'fast'):
            text, r = same_text_ratio(ids, name)
            pooled[name] += r
            row.append(text)
        ratio_rows.append(row)
    ratio_rows.append(['all classes', '', ''] + [f'{statistics.median(pooled[n]):.2f} ({len(pooled[n])})'
                                                 if pooled[n] else '–' for n in ('exact', 'fast')])
    ratio_table = md_table(['class', 'exact / default, plain', 'exact / default, all',
                            'exact / default, all, same text (prompts)',
                            'fast / default, all, same text (prompts)'], ratio_rows)
    md = (f'{bg.setup_line(args)}\n\nCost of one batch of N tokens:\n\n{cost_table}\n\n'
          f'Generation (medians per class):\n\n{gen_table}\n\n{ratio_table}\n')
    slim = {pid: {f'{n}/{m}': {k: v for k, v in r.items() if k != 'token_ids'} for (n, m), r in rs.items()}
            for pid, rs in runs.items()}
    write_results(out, md, {'args': vars(args), 'curves': curves, 'summary': summary, 'runs': slim})


if __name__ == '__main__':
    main()
