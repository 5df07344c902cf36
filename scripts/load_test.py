#!/usr/bin/env python3
"""Bounded load test of an OpenAI-compatible server on loopback: N concurrent clients for D seconds
of mixed short and long greedy completions; prints p50/p99 latency, throughput, errors and the
server's memory over time, and fails on any error or on memory that keeps growing.

Usage:
  scripts/load_test.py [--clients 32] [--duration 60] [--threads 1] [--url URL --pid PID]

Without --url it starts `ibid serve` (target/release/ibid, the Gemma 3 270M test model, drafting on,
no index) on a free port and stops it with SIGTERM at the end (which must exit 0).
Requests alternate between short (a one-line prompt, 8 tokens) and long (a ~300-token CPython
standard library excerpt, 64 tokens); every client sends its next request when the last one is
answered. Memory: the server's RSS every second; "flat" means the last third's mean is within 10 %
(or 20 MiB) of the second third's mean.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompts():
    stdlib = sysconfig.get_paths()['stdlib']
    long_text = open(os.path.join(stdlib, 'heapq.py'), encoding='utf-8').read()[:1200]
    return [('short', 'The capital of France is', 8), ('long', long_text, 64)]


def rss_kib(pid):
    try:
        for line in open(f'/proc/{pid}/status'):
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def start_ibid(threads, extra=()):
    model = subprocess.run(['bash', 'scripts/model_path.sh'], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.strip()
    cache = tempfile.mkdtemp(prefix='ibid-load-')
    proc = subprocess.Popen([os.path.join(ROOT, 'target/release/ibid'), '--threads', str(threads), 'serve',
                             '--model', model, '--addr', '127.0.0.1:0', *extra],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'XDG_CACHE_HOME': cache, 'IBID_LOG': 'warn'})
    url = None
    for line in proc.stderr:
        if ' serving ' in line:
            url = line.strip().rsplit(' ', 1)[1]
            break
    if url is None:
        sys.exit('load_test: ibid serve did not start')
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, url


def run_load(url, clients, duration, pid=None, requests=None, model='x'):
    """Drive the load; returns a summary dict."""
    requests = requests or prompts()
    lat = {kind: [] for kind, _, _ in requests}
    tokens = [0]
    errors = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration
    mem = []

    def client(i):
        n = i
        while time.monotonic() < stop_at:
            kind, prompt, max_tokens = requests[n % len(requests)]
            n += 1
            body = json.dumps({'model': model, 'prompt': prompt, 'max_tokens': max_tokens, 'temperature': 0}).encode()
            req = urllib.request.Request(url + '/v1/completions', data=body, headers={'Content-Type': 'application/json'})
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    ans = json.load(r)
                dt = time.monotonic() - t0
                with lock:
                    lat[kind].append(dt)
                    tokens[0] += ans['usage']['completion_tokens']
            except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
                with lock:
                    errors.append(f'{kind}: {e}')

    def sample():
        while time.monotonic() < stop_at + 1:
            if pid:
                mem.append(rss_kib(pid))
            time.sleep(1)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    everything = sorted(x for v in lat.values() for x in v)

    def pct(v, q):
        return v[min(len(v) - 1, int(q * len(v)))] if v else float('nan')

    mem = [m for m in mem if m]
    third = max(1, len(mem) // 3)
    mid = statistics.mean(mem[third:2 * third]) if len(mem) >= 3 else None
    last = statistics.mean(mem[-third:]) if len(mem) >= 3 else None
    return {
        'clients': clients, 'duration_s': duration, 'wall_s': wall,
        'requests': len(everything), 'errors': len(errors), 'error_samples': errors[:5],
        'completion_tokens': tokens[0], 'tokens_per_s': tokens[0] / wall,
        'p50_s': pct(everything, 0.5), 'p99_s': pct(everything, 0.99),
        'by_kind': {k: {'n': len(v), 'p50_s': pct(sorted(v), 0.5), 'p99_s': pct(sorted(v), 0.99)} for k, v in lat.items()},
        'rss_mib': {'first': mem[0] / 1024 if mem else None, 'max': max(mem) / 1024 if mem else None,
                    'middle_third': mid / 1024 if mid else None, 'last_third': last / 1024 if last else None},
        'memory_flat': None if mid is None else (last - mid) <= max(0.10 * mid, 20 * 1024),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--clients', type=int, default=32)
    ap.add_argument('--duration', type=float, default=60)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--url')
    ap.add_argument('--pid', type=int)
    args = ap.parse_args()
    proc = None
    url, pid = args.url, args.pid
    if url is None:
        proc, url = start_ibid(args.threads)
        pid = proc.pid
    try:
        s = run_load(url, args.clients, args.duration, pid)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
    print(json.dumps(s, indent=1))
    print(f"load_test: {s['requests']} requests from {s['clients']} clients in {s['wall_s']:.0f} s, "
          f"{s['errors']} errors, p50 {s['p50_s']:.2f} s, p99 {s['p99_s']:.2f} s, {s['tokens_per_s']:.1f} tokens/s, "
          f"RSS {s['rss_mib']['first']:.0f} → {s['rss_mib']['max']:.0f} MiB max (flat: {s['memory_flat']})")
    failed = s['errors'] > 0 or s['memory_flat'] is False or s['requests'] == 0
    if proc is not None and code != 0:
        print(f'load_test: the server exited with {code} after SIGTERM', file=sys.stderr)
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
