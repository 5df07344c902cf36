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
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_test import run_load  # noqa: E402
from bench_generate import (CLASS_INDEX, LLAMA_BIN, SERVER_MODES, free_port, matrices_set_aside, md_table,  # noqa: E402
                            stop_server, wait_ready)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def calibrate(model, threads):
    """A cache folder holding ibid's cost curve for this machine, measured up to the largest batch
    the server forms (4 slots x 49 tokens), as `ibid calibrate` leaves it for a user."""
    cache = tempfile.mkdtemp(prefix='ibid-bench-serve-')
    # ibid's default sizes (every size to 16, then an even and an odd size at each point, as odd
    # batches cost more here), on to the largest batch.
    sizes = ','.join(map(str, [*range(1, 17), 20, 21, 24, 25, 32, 33, 40, 41, 48, 49, 64, 65, 96, 97, 128, 129,
                                160, 161, 196, 197]))
    subprocess.run([os.path.join(ROOT, 'target/release/ibid'), '--threads', str(threads), 'calibrate', '--model', model,
                    '--sizes', sizes, '--batch', '200', '--reps', '3'],
                   cwd=ROOT, check=True, capture_output=True, env={**os.environ, 'XDG_CACHE_HOME': cache})
    return cache


def start_ibid(model, cls, threads, logs, cache):
    port = free_port()
    err = open(os.path.join(logs, f'ibid-{cls}.err'), 'w')
    proc = subprocess.Popen([os.path.join(ROOT, 'target/release/ibid'), '--threads', str(threads), 'serve',
                             '--model', model, '--index', CLASS_INDEX[cls], '--addr', f'127.0.0.1:{port}',
                             '--no-recycle-save'],
                            cwd=ROOT, stderr=err, env={**os.environ, 'XDG_CACHE_HOME': cache, 'IBID_LOG': 'warn'})
    return proc, f'http://127.0.0.1:{port}', err


def start_llama(model, mode, threads, logs):
    port = free_port()
    err = open(os.path.join(logs, f'llama-server-{mode}.err'), 'w')
    proc = subprocess.Popen([os.path.join(LLAMA_BIN, 'llama-server'), '-m', model, '-t', str(threads), '-c', '4096',
                             '-fa', 'on', '--port', str(port), '--host', '127.0.0.1', '--spec-type', mode],
                            cwd=ROOT, stdout=err, stderr=err)
    return proc, f'http://127.0.0.1:{port}', err


def serve_all(args, model, cache, logs, classes, results, rows):
    """Each class against ibid serve and every llama-server mode, one server at a time."""
    for cls in classes:
        files = sorted(glob.glob(os.path.join(ROOT, args.prompts_from, f'{cls}-*.txt')))
        if not files:
            sys.exit(f'bench_serve: no {cls} prompts in {args.prompts_from}: run scripts/bench_generate.py first')
        requests = [(cls, open(f, encoding='utf-8').read(), 128) for f in files]
        configs = [('ibid serve', lambda: start_ibid(model, cls, args.threads, logs, cache))]
        configs += [(f'llama-server {m}', lambda m=m: start_llama(model, m, args.threads, logs)) for m in SERVER_MODES]
        for name, start in configs:
            proc, url, err = start()
            try:
                wait_ready(url, proc, name)
                s = run_load(url, args.clients, args.duration, proc.pid, requests)
            finally:
                stop_server(proc)
                err.close()
            results.setdefault(cls, {})[name] = s
            print(f'[bench_serve] {cls} {name}: {s["tokens_per_s"]:.1f} tokens/s, p99 {s["p99_s"]:.1f} s, '
                  f'{s["requests"]} requests, {s["errors"]} errors', file=sys.stderr, flush=True)
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
    model = subprocess.run(['bash', 'scripts/model_path.sh'], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.strip()
    cache = calibrate(model, args.threads)
    results, rows = {}, []
    classes = args.classes.split(',')
    with matrices_set_aside({CLASS_INDEX[c] for c in classes}):
        serve_all(args, model, cache, logs, classes, results, rows)
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')
    md = (f'{args.clients} concurrent clients, {args.duration:.0f} s per server and class, greedy, 128 new tokens per '
          f'request, {args.threads} threads, Gemma 3 270M Q4_K_M, {cpu}.\n\n' +
          md_table(['class', 'server', 'tokens/s', 'p50 latency (s)', 'p99 latency (s)', 'requests', 'errors',
                    'ibid / this'], rows) + '\n')
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write(md)
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump({'args': vars(args), 'results': results}, f, indent=1)
    print(md)


if __name__ == '__main__':
    main()
