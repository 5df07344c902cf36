#!/usr/bin/env python3
"""Bounded load test of an OpenAI-compatible server on loopback: N concurrent clients for D seconds
of mixed short and long greedy completions; prints p50/p99 latency, throughput, errors and the
server's memory over time, and fails on any error or on memory that keeps growing.

Usage:
  scripts/load_test.py [--clients 32] [--hostile 8] [--duration 60] [--threads 1] [--url URL --pid PID]

Without --url it starts `ibid serve` (target/release/ibid, the Gemma 3 270M test model, drafting on,
no index) on a free port and stops it with SIGTERM at the end (which must exit 0).
Requests alternate between short (a one-line prompt, 8 tokens) and long (a ~300-token CPython
standard library excerpt, 64 tokens); every client sends its next request when the last one is
answered. Every greedy answer must equal plain decoding (`ibid generate --draft none`, computed
first). With --hostile N, N more clients interleave hostile requests (huge top_k, extreme
temperatures, out-of-vocabulary ids, malformed and non-UTF-8 bodies, oversized bodies, streams
dropped mid-way, half-sent requests, wrong methods): each must get its 4xx or a valid answer, never a
5xx or a dropped connection, and the normal clients must not notice. Memory: the server's RSS every second; "flat" means the last third's mean is within 10 %
(or 20 MiB) of the second third's mean.
"""

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import IBID, ROOT, model_path, rss_kib, start_ibid  # noqa: E402


def prompts():
    stdlib = sysconfig.get_paths()['stdlib']
    long_text = open(os.path.join(stdlib, 'heapq.py'), encoding='utf-8').read()[:1200]
    return [('short', 'The capital of France is', 8), ('long', long_text, 64)]


def plain_answers(requests, threads):
    """What plain greedy decoding gives for each request: `ibid generate --draft none`."""
    model = model_path()
    out = {}
    for kind, prompt, max_tokens in requests:
        with tempfile.NamedTemporaryFile(suffix='.json') as report:
            subprocess.run([IBID, '--threads', str(threads), 'generate', '--model', model, '--prompt', prompt,
                            '--max-tokens', str(max_tokens), '--draft', 'none', '--no-recycle-save',
                            '--report', report.name], cwd=ROOT, check=True,
                           capture_output=True, env={**os.environ, 'IBID_LOG': 'warn'})
            out[kind] = json.load(open(report.name))['text']
    return out


def hostile_requests():
    """(name, method, path, body bytes, what is acceptable): requests a careless or hostile client sends."""
    def j(v):
        return json.dumps(v).encode()
    ok_or_400 = {200, 400}
    return [
        ('top_k 4e9', 'POST', '/v1/completions', j({'prompt': 'Hello', 'max_tokens': 3, 'temperature': 1, 'top_k': 4000000000}), ok_or_400),
        ('top_k 2^62', 'POST', '/v1/completions', j({'prompt': 'Hello', 'max_tokens': 3, 'temperature': 1, 'top_k': 4611686018427387904}), ok_or_400),
        ('top_k -5', 'POST', '/v1/completions', j({'prompt': 'Hello', 'max_tokens': 3, 'top_k': -5}), ok_or_400),
        ('temperature 1e308', 'POST', '/v1/completions', j({'prompt': 'Hi', 'max_tokens': 3, 'temperature': 1e308}), ok_or_400),
        ('temperature 1e-300', 'POST', '/v1/completions', j({'prompt': 'Hi', 'max_tokens': 3, 'temperature': 1e-300, 'seed': -1}), ok_or_400),
        ('top_p 1e-300', 'POST', '/v1/completions', j({'prompt': 'Hi', 'max_tokens': 3, 'temperature': 0.8, 'top_p': 1e-300}), ok_or_400),
        ('max_tokens 1e12', 'POST', '/v1/completions', j({'prompt': 'Hi', 'max_tokens': 10 ** 12}), {400}),
        ('max_tokens 0', 'POST', '/v1/completions', j({'prompt': 'Hi', 'max_tokens': 0}), {400}),
        ('token id 2^32-1', 'POST', '/v1/completions', j({'prompt': [2, 4294967295], 'max_tokens': 2}), {400}),
        ('prompt past the context', 'POST', '/v1/completions', j({'prompt': 'word ' * 5000, 'max_tokens': 2}), {400}),
        ('100 stop strings', 'POST', '/v1/completions', j({'prompt': 'Hi', 'max_tokens': 2, 'stop': ['a'] * 100}), {400}),
        ('n 5', 'POST', '/v1/completions', j({'prompt': 'Hi', 'max_tokens': 2, 'n': 5}), {400}),
        ('unknown field', 'POST', '/v1/completions', j({'prompt': 'Hi', 'bogus': 1}), {400}),
        ('truncated JSON', 'POST', '/v1/completions', b'{"prompt": "Hi", "max_tok', {400}),
        ('not UTF-8', 'POST', '/v1/completions', b'{"prompt": "\xff\xfe\x00"}', {400}),
        ('raw bytes', 'POST', '/v1/chat/completions', bytes(range(256)), {400}),
        ('JSON array', 'POST', '/v1/chat/completions', b'[1, 2, 3]', {400}),
        ('no messages', 'POST', '/v1/chat/completions', j({'messages': []}), {400}),
        ('unknown role', 'POST', '/v1/chat/completions', j({'messages': [{'role': 'wizard', 'content': 'hi'}]}), {400}),
        ('image part', 'POST', '/v1/chat/completions', j({'messages': [{'role': 'user', 'content': [{'type': 'image_url'}]}]}), {400}),
        ('chat, sampled', 'POST', '/v1/chat/completions', j({'messages': [{'role': 'user', 'content': 'Hi'}], 'max_tokens': 4, 'temperature': 1.5, 'top_k': 262144, 'seed': 7}), {200}),
        ('2 MB body', 'POST', '/v1/completions', b'{"prompt": "' + b'a' * (2 << 20) + b'"}', {413}),
        ('GET a POST route', 'GET', '/v1/completions', b'', {405}),
        ('no such route', 'POST', '/v2/everything', b'{}', {404}),
    ]


def send_raw(url, method, path, body, timeout=120):
    """(status, body bytes) of one request; a transport error raises."""
    req = urllib.request.Request(url + path, data=body if method != 'GET' else None, method=method,
                                 headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def dropped_stream(url):
    """A streamed completion the client leaves after its first event."""
    req = urllib.request.Request(url + '/v1/completions', headers={'Content-Type': 'application/json'},
                                 data=json.dumps({'prompt': 'Once upon a time', 'max_tokens': 64, 'stream': True}).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        r.readline()
    return 200


def half_sent(url):
    """Headers that promise a body that never comes; the client gives up after a second."""
    host, port = url.split('//', 1)[1].split(':')
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                  b'Content-Length: 1000\r\n\r\n{"prompt": ')
        time.sleep(1)
    return 200


def run_load(url, clients, duration, pid=None, requests=None, model='x', hostile=0, plain=None):
    """Drive the load; returns a summary dict."""
    requests = requests or prompts()
    lat = {kind: [] for kind, _, _ in requests}
    tokens = [0]
    errors = []
    unequal = []
    hostile_seen = {}
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
                    if plain is not None and ans['choices'][0]['text'] != plain[kind]:
                        unequal.append(f"{kind}: {ans['choices'][0]['text']!r}")
            except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
                with lock:
                    errors.append(f'{kind}: {e}')

    def expect(method, path, body, want):
        """An attack: one request; right when its status is wanted and an error has an `error` body."""
        def attack():
            code, answer = send_raw(url, method, path, body)
            return code, code in want and (code == 200 or 'error' in json.loads(answer))
        return attack

    attacks = [(name, expect(*request)) for name, *request in hostile_requests()]
    attacks += [('dropped stream', lambda: (dropped_stream(url), True)), ('half-sent request', lambda: (half_sent(url), True))]

    def attacker(i):
        rng = random.Random(i)
        while time.monotonic() < stop_at:
            name, attack = rng.choice(attacks)
            try:
                code, ok = attack()
            except (urllib.error.URLError, OSError, ValueError) as e:
                code, ok = None, False
                with lock:
                    errors.append(f'hostile {name}: {e}')
            with lock:
                seen = hostile_seen.setdefault(name, {'sent': 0, 'wrong': 0, 'statuses': set()})
                seen['sent'] += 1
                seen['statuses'].add(code)
                if not ok:
                    seen['wrong'] += 1

    def sample():
        while time.monotonic() < stop_at + 1:
            if pid:
                mem.append(rss_kib(pid))
            time.sleep(1)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads += [threading.Thread(target=attacker, args=(i,)) for i in range(hostile)]
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
        'unequal_to_plain': len(unequal), 'unequal_samples': unequal[:3],
        'hostile': {k: {**v, 'statuses': sorted(v['statuses'], key=str)} for k, v in sorted(hostile_seen.items())},
        'hostile_sent': sum(v['sent'] for v in hostile_seen.values()),
        'hostile_wrong': sum(v['wrong'] for v in hostile_seen.values()),
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
    ap.add_argument('--hostile', type=int, default=0, help='clients sending hostile requests besides --clients')
    ap.add_argument('--url')
    ap.add_argument('--pid', type=int)
    args = ap.parse_args()
    proc = None
    url, pid = args.url, args.pid
    plain = plain_answers(prompts(), args.threads)
    if url is None:
        proc, url = start_ibid(model_path(), args.threads,
                               env={'XDG_CACHE_HOME': tempfile.mkdtemp(prefix='ibid-load-'), 'IBID_LOG': 'warn'})
        if url is None:
            sys.exit('load_test: ibid serve did not start')
        pid = proc.pid
    try:
        s = run_load(url, args.clients, args.duration, pid, hostile=args.hostile, plain=plain)
        health = send_raw(url, 'GET', '/health', b'')[0]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
    print(json.dumps(s, indent=1))
    print(f"load_test: {s['requests']} requests from {s['clients']} clients in {s['wall_s']:.0f} s, "
          f"{s['errors']} errors, p50 {s['p50_s']:.2f} s, p99 {s['p99_s']:.2f} s, {s['tokens_per_s']:.1f} tokens/s, "
          f"RSS {s['rss_mib']['first']:.0f} → {s['rss_mib']['max']:.0f} MiB max (flat: {s['memory_flat']}); "
          f"{s['requests'] - s['unequal_to_plain']} of {s['requests']} answers equal plain decoding; "
          f"{s['hostile_sent']} hostile requests ({len(s['hostile'])} kinds), {s['hostile_wrong']} answered wrongly; "
          f"/health {health} afterwards")
    failed = (s['errors'] > 0 or s['memory_flat'] is False or s['requests'] == 0 or s['unequal_to_plain'] > 0
              or s['hostile_wrong'] > 0 or health != 200)
    if proc is not None and code != 0:
        print(f'load_test: the server exited with {code} after SIGTERM', file=sys.stderr)
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
