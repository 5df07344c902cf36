#!/usr/bin/env python3
"""Serving benchmark: `ibid serve` vs `llama-server` (plain and each `--spec-type` n-gram mode)
under the same load, same model, same threads, one server at a time.

Usage:
  scripts/bench_serve.py [--clients 4] [--duration 60] [--threads 2] [--classes copy,code,chat]
                         [--out data/bench-serve]

Load: --clients concurrent clients, each sending its next greedy completion (128 new tokens) as soon
as the last is answered, for --duration seconds (requests in flight then finish), cycling through
the class's prompts from scripts/bench_generate.py (run that first: its prompts and indexes are
reused). Servers: ibid serve --index <class index> (drafting on, the default, its cost curve from
`ibid calibrate` first; its recycling matrix warm-started from the index alone: a matrix saved
there by earlier runs of these prompts is set aside for the benchmark), and llama-server
(from scripts/build_llama_tools.sh) with its default slots (-np auto: it batches concurrent
requests) and flash attention on, --spec-type none and each n-gram mode. Reported per class and
server: completion tokens/s over the run, p50 and p99 request latency, requests, errors.
Writes OUT/results.md (printed) and OUT/results.json.
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_test import run_load  # noqa: E402
from bench_generate import CLASS_INDEX, SERVER_MODES, matrices_set_aside  # noqa: E402
from benchlib import (IBID, ROOT, cpu_model, die, logger, md_table, model_path, start_ibid,  # noqa: E402
                      start_llama_server, stop_server, wait_ready, write_results)

log = logger('bench_serve')


def calibrate(model, threads):
    """A cache folder holding ibid's cost curve for this machine, measured up to the largest batch
    the server forms (4 slots x 49 tokens), as `ibid calibrate` leaves it for a user."""
    cache = tempfile.mkdtemp(prefix='ibid-bench-serve-')
    # ibid's default sizes (every size to 16, then an even and an odd size at each point, as odd
    # batches cost more here), on to the largest batch.
    sizes = ','.join(map(str, [*range(1, 17), 20, 21, 24, 25, 32, 33, 40, 41, 48, 49, 64, 65, 96, 97, 128, 129,
                                160, 161, 196, 197]))
    subprocess.run([IBID, '--threads', str(threads), 'calibrate', '--model', model,
                    '--sizes', sizes, '--batch', '200', '--reps', '3'],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, 'XDG_CACHE_HOME': cache})
    return cache


def start_ibid_server(model, cls, threads, logs, cache):
    """ibid serve drafting from the class's index, its cost curve from `cache`, stderr to
    LOGS/ibid-CLASS.err."""
    return start_ibid(model, threads, ['--index', CLASS_INDEX[cls], '--no-recycle-save'],
                      env={'XDG_CACHE_HOME': cache, 'IBID_LOG': 'warn'},
                      log_path=os.path.join(logs, f'ibid-{cls}.err'))


def serve_all(args, model, cache, logs, classes, results, rows):
    """Each class against ibid serve and every llama-server mode, one server at a time."""
    for cls in classes:
        files = sorted(glob.glob(os.path.join(ROOT, args.prompts_from, f'{cls}-*.txt')))
        if not files:
            sys.exit(f'bench_serve: no {cls} prompts in {args.prompts_from}: run scripts/bench_generate.py first')
        requests = [(cls, open(f, encoding='utf-8').read(), 128) for f in files]
        configs = [('ibid serve', lambda: start_ibid_server(model, cls, args.threads, logs, cache))]
        configs += [(f'llama-server {m}',
                     lambda m=m: start_llama_server(model, args.threads, m, os.path.join(logs, f'llama-server-{m}.err')))
                    for m in SERVER_MODES]
        for name, start in configs:
            proc, url = start()
            try:
                if url is None:
                    die(f'{name} exited')
                wait_ready(url, proc, name)
                s = run_load(url, args.clients, args.duration, proc.pid, requests)
            finally:
                stop_server(proc)
            results.setdefault(cls, {})[name] = s
            log(f'{cls} {name}: {s["tokens_per_s"]:.1f} tokens/s, p99 {s["p99_s"]:.1f} s, '
                f'{s["requests"]} requests, {s["errors"]} errors')
        ibid = results[cls]['ibid serve']
        llama = {k: v for k, v in results[cls].items() if k != 'ibid serve'}
        best = max(llama.items(), key=lambda kv: kv[1]['tokens_per_s'])
        for name, s in results[cls].items():
            rows.append([cls, name, f'{s["tokens_per_s"]:.1f}', f'{s["p50_s"]:.1f}', f'{s["p99_s"]:.1f}',
                         str(s['requests']), str(s['errors']),
                         f'{ibid["tokens_per_s"] / s["tokens_per_s"]:.2f}' if name != 'ibid serve' else '–'])
        rows.append([cls, f'**best llama-server: {best[0].split(" ", 1)[1]}**', '', '', '', '', '',
                     f'**{ibid["tokens_per_s"] / best[1]["tokens_per_s"]:.2f}**'])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--clients', type=int, default=4)
    ap.add_argument('--duration', type=float, default=60)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--classes', default='copy,code,chat')
    ap.add_argument('--prompts-from', default='data/bench-generate/prompts')
    ap.add_argument('--out', default='data/bench-serve')
    args = ap.parse_args()
    out = os.path.join(ROOT, args.out)
    logs = os.path.join(out, 'logs')
    os.makedirs(logs, exist_ok=True)
    model = model_path()
    cache = calibrate(model, args.threads)
    results, rows = {}, []
    classes = args.classes.split(',')
    with matrices_set_aside({CLASS_INDEX[c] for c in classes}):
        serve_all(args, model, cache, logs, classes, results, rows)
    cpu = cpu_model()
    md = (f'{args.clients} concurrent clients, {args.duration:.0f} s per server and class, greedy, 128 new tokens per '
          f'request, {args.threads} threads, Gemma 3 270M Q4_K_M, {cpu}.\n\n' +
          md_table(['class', 'server', 'tokens/s', 'p50 latency (s)', 'p99 latency (s)', 'requests', 'errors',
                    'ibid / this'], rows) + '\n')
    write_results(out, md, {'args': vars(args), 'results': results})


if __name__ == '__main__':
    main()
