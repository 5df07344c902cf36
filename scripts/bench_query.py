#!/usr/bin/env python3
"""Query-latency benchmark: ibid vs. infini-gram's engine on the same tokens.

Usage:
  scripts/bench_query.py [--quick] [--out DIR] [--build-dir DIR] [-k K] [--repeat N]
                         [--indexes bytes,u16,gguf] [--skip-ig] [--bin PATH]

Indexes (from scripts/bench_build.py, which is run first if BUILD_DIR is missing):

  bytes  ibid BUILD_DIR/bytes (u8, ibid-built)  vs  infini-gram BUILD_DIR/ig-bytes (same tokens)
  u16    ibid BUILD_DIR/ibid-u16                vs  infini-gram BUILD_DIR/ig-u16   (same tokens)
  gguf   ibid BUILD_DIR/gguf (u32 Gemma tokens), ibid alone (infini-gram has no u32 engine)

Queries are sampled from each index's own token file with a fixed seed, never
across a document separator:

  count         an n-gram at a random position, n = 1..10, K per n
  ntd           the next-token distribution after a random n-token context
                (max_support --max-support, default 1000), n = 1..10, K per n
  infgram_prob  a random window of n+5 context tokens plus the true next token,
                with the window's first token replaced by a random id, so the
                longest suffix that occurs varies; n = 1..10, K per n
  ntd, 1e4-1e5  up to K contexts (1-4 tokens, from random positions) that occur
                between 10^4 and 10^5 times (counted with ibid first): the
                "ntd <= 100 us for contexts with up to 10^5 occurrences" target

Runs, one after another (never two at once): ibid's benches/query_latency
(through the library, one process, each query --repeat times around the library
call) and scripts/infinigram.py query --time --repeat (infini-gram's engine,
timed around the C++ call from Python), the latter twice: default prefetch
settings and prefetch depths 0. Each engine first makes one untimed pass over
the queries so its files are in the page cache. Every ibid answer is compared
with infini-gram's (count; prompt_cnt, cont_cnt, prob, suffix_len;
result_by_token_id and approx), and the two infini-gram runs with each other.

Percentiles are over the per-query medians (us_median). Prints a Markdown table
and writes OUT/results.md, OUT/results.json and the raw JSONL (queries and each
engine's answers) under OUT/raw/.

--quick: K = 20 on BUILD_DIR data/bench-build-quick, OUT data/bench-query-quick
(otherwise K = 100, data/bench-build, data/bench-query).
"""

import argparse
import array
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, cpu_model, die, logger, shard_ids, write_results  # noqa: E402

PY = sys.executable
INFINIGRAM = os.path.join(ROOT, 'scripts', 'infinigram.py')
BENCH_BUILD = os.path.join(ROOT, 'scripts', 'bench_build.py')

BUCKETS = (('1-3', 1, 3), ('4-6', 4, 6), ('7-10', 7, 10))
HEAVY = '1e4-1e5 occ'
HEAVY_LO, HEAVY_HI = 10_000, 100_000
TYPES = ('count', 'ntd', 'infgram_prob')


log = logger('bench-query')


# --------------------------------------------------------------------------
# indexes
# --------------------------------------------------------------------------

def index_specs(build_dir):
    """name, token width, ibid dir, infini-gram dir (or None), eos, largest query id."""
    return [
        # infini-gram: vocab_size defaults to 255 (u8) / 65535 (u16), eos to vocab_size - 1; ibid
        # gets the same eos so that end-of-document next tokens read the same.
        dict(name='bytes', width=1, ibid=os.path.join(build_dir, 'bytes'), ig=os.path.join(build_dir, 'ig-bytes'),
             eos=254, max_id=254),
        dict(name='u16', width=2, ibid=os.path.join(build_dir, 'ibid-u16'), ig=os.path.join(build_dir, 'ig-u16'),
             eos=65534, max_id=65534),
        dict(name='gguf', width=4, ibid=os.path.join(build_dir, 'gguf'), ig=None, eos=None, max_id=None),
    ]


def shard_files(d):
    ks = shard_ids(d)
    if not ks:
        die(f'no tokenized.K in {d}')
    return [os.path.join(d, f'tokenized.{k}') for k in ks]


def load_tokens(path, width):
    with open(path, 'rb') as f:
        raw = f.read()
    if width == 1:
        return raw
    a = array.array({2: 'H', 4: 'I'}[width])
    if a.itemsize != width:
        die(f'array type for width {width} has item size {a.itemsize}')
    a.frombytes(raw)
    if sys.byteorder != 'little':
        a.byteswap()
    return a


def gguf_max_id(d):
    try:
        with open(os.path.join(d, 'ibid.json')) as f:
            return int(json.load(f)['tokenizer']['vocab_size']) - 1
    except (OSError, KeyError, ValueError, TypeError):
        return (1 << 31) - 1


class Sampler:
    def __init__(self, shards, width, rng):
        self.shards = shards
        self.sep = (1 << (8 * width)) - 1
        self.rng = rng
        self.weights = [len(s) for s in shards]

    def window(self, length):
        """`length` tokens at a random position (shards weighted by size), no separator."""
        for _ in range(1_000_000):
            s = self.rng.choices(self.shards, weights=self.weights)[0]
            if len(s) <= length:
                continue
            pos = self.rng.randrange(len(s) - length + 1)
            w = list(s[pos:pos + length])
            if self.sep not in w:
                return w
        die(f'cannot find a separator-free window of {length} tokens')


def make_queries(spec, k, max_support, seed, heavy_candidates, replace='first'):
    """Returns (queries, heavy candidate n-grams) for one index; queries carry id/type/n."""
    shards = [load_tokens(p, spec['width']) for p in shard_files(spec['ibid'])]
    rng = random.Random(f'{seed}/{spec["name"]}')
    smp = Sampler(shards, spec['width'], rng)
    max_id = spec['max_id'] if spec['max_id'] is not None else gguf_max_id(spec['ibid'])
    qs = []
    for n in range(1, 11):
        for i in range(k):
            qs.append({'op': 'count', 'ids': smp.window(n), 'id': f'count/{n}/{i}', 'type': 'count', 'n': n})
    for n in range(1, 11):
        for i in range(k):
            qs.append({'op': 'ntd', 'ids': smp.window(n), 'max_support': max_support,
                       'id': f'ntd/{n}/{i}', 'type': 'ntd', 'n': n})
    for n in range(1, 11):
        for i in range(k):
            w = smp.window(n + 6)
            ctx, nxt = w[:-1], w[-1]
            # 'first': the brief's recipe (the rest of the window occurs, so suffix_len is mostly
            # n+4); 'random': a random position, so suffix_len spreads over 0..n+4.
            j = 0 if replace == 'first' else rng.randrange(len(ctx))
            ctx[j] = rng.randint(0, max_id)
            qs.append({'op': 'infgram_prob', 'ids': ctx, 'next': nxt,
                       'id': f'infgram_prob/{n}/{i}', 'type': 'infgram_prob', 'n': n})
    # Candidates for the 1e4-1e5 set: n-grams at random positions are biased toward frequent ones.
    cands, seen = [], set()
    for _ in range(heavy_candidates):
        w = smp.window(4)
        for n in (1, 2, 3, 4):
            t = tuple(w[:n])
            if t not in seen:
                seen.add(t)
                cands.append(list(t))
    tails = [list(sh[-32:]) for sh in shards]
    return qs, cands, rng, tails


def ends_a_shard(ids, tails):
    return bool(ids) and any(len(t) >= len(ids) and t[-len(ids):] == list(ids) for t in tails)


END_OF_SHARD_NOTE = ('the context ends the token file: infini-gram maps both the end of the file and a '
                     'separator to eos before its first == last shortcut, so it takes the whole range for eos')


def wire(q):
    """The query as the engines read it (id, op and arguments only)."""
    return {key: q[key] for key in ('op', 'ids', 'next', 'max_support', 'id') if key in q}


def write_jsonl(path, rows):
    with open(path, 'w') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')


def read_jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------

def build_ibid_bench():
    log('cargo bench --no-run --bench query_latency')
    p = subprocess.run(['cargo', 'bench', '--no-run', '--bench', 'query_latency', '--message-format=json'],
                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        die('cargo bench --no-run failed')
    exe = None
    for line in p.stdout.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get('reason') == 'compiler-artifact' and m.get('target', {}).get('name') == 'query_latency' \
                and m.get('executable'):
            exe = m['executable']
    if not exe:
        die('could not find the query_latency executable in cargo\'s output')
    return exe


def run_ibid(binary, spec, qfile, repeat, extra=()):
    cmd = [binary, '--index', spec['ibid'], '--token-width', str(spec['width']), '--queries', qfile,
           '--repeat', str(repeat), *extra]
    if spec['eos'] is not None:
        cmd += ['--eos', str(spec['eos'])]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        die(f'{" ".join(cmd)} failed (rc={p.returncode}):\n{p.stderr}')
    return read_jsonl(p.stdout), wall, p.stderr.strip()


IG_PREFETCH0 = ['--ds-prefetch-depth', '0', '--sa-prefetch-depth', '0', '--od-prefetch-depth', '0']


def run_ig(spec, qfile, repeat, extra=(), timed=True):
    cmd = [PY, INFINIGRAM, 'query', spec['ig'], '--token-width', str(spec['width']), '--eos', str(spec['eos']),
           *extra]
    if timed:
        cmd += ['--time', '--repeat', str(repeat)]
    t0 = time.perf_counter()
    with open(qfile) as f:
        p = subprocess.run(cmd, stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        die(f'{" ".join(cmd)} failed (rc={p.returncode}):\n{p.stderr}')
    return read_jsonl(p.stdout), wall


# --------------------------------------------------------------------------
# comparison and statistics
# --------------------------------------------------------------------------

def close(a, b):
    if a == b:
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return False


def diff(q, a, b):
    """Differences between two answers to query q (empty list: they agree)."""
    if 'error' in a or 'error' in b:
        return [] if ('error' in a and 'error' in b) else [('error', a.get('error'), b.get('error'))]
    op = q['op']
    keys = {'count': ('count',),
            'prob': ('prompt_cnt', 'cont_cnt', 'prob'),
            'ntd': ('prompt_cnt', 'approx'),
            'infgram_prob': ('prompt_cnt', 'cont_cnt', 'prob', 'suffix_len'),
            'infgram_ntd': ('prompt_cnt', 'approx', 'suffix_len')}[op]
    out = [(key, a.get(key), b.get(key)) for key in keys if not close(a.get(key), b.get(key))]
    if op in ('ntd', 'infgram_ntd'):
        da, db = a.get('result_by_token_id', {}), b.get('result_by_token_id', {})
        for t in sorted(set(da) | set(db), key=int):
            x, y = da.get(t), db.get(t)
            if x is None or y is None or x['cont_cnt'] != y['cont_cnt'] or not close(x['prob'], y['prob']):
                out.append((f'result_by_token_id[{t}]', x, y))
    return out


def percentile(xs, p):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(xs)
    if not xs:
        return None
    pos = (len(xs) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def group_rows(queries):
    """(type, bucket, member queries) in table order; 'all n' over the random buckets."""
    rows = []
    for t in TYPES:
        mine = [q for q in queries if q['type'] == t]
        for label, lo, hi in BUCKETS:
            rows.append((t, label, [q for q in mine if lo <= q['n'] <= hi]))
        rows.append((t, 'all n', mine))
        if t == 'ntd':
            rows.append(('ntd', HEAVY, [q for q in queries if q['type'] == 'ntd-heavy']))
    return [r for r in rows if r[2]]


def stats(queries, engine):
    xs = [q['us'][engine] for q in queries if q.get('us', {}).get(engine) is not None]
    if not xs:
        return None
    return {'n': len(xs), 'median': statistics.median(xs), 'p99': percentile(xs, 99), 'max': max(xs),
            'mean': statistics.fmean(xs)}


def fmt(x):
    if x is None:
        return '–'
    if x >= 100:
        return f'{x:,.0f}'
    if x >= 10:
        return f'{x:.1f}'
    return f'{x:.2f}'


def speed(ig, ib):
    if not ig or not ib or ib['median'] <= 0:
        return '–'
    return f'{ig["median"] / ib["median"]:.1f}×'


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def bench_index(spec, a, binary, raw_dir):
    name = spec['name']
    has_ig = spec['ig'] is not None and not a.skip_ig
    for d in [spec['ibid']] + ([spec['ig']] if has_ig else []):
        if not os.path.isdir(d):
            die(f'{d} is missing (run scripts/bench_build.py{" --quick" if a.quick else ""})')
    if has_ig:
        for p, q in zip(shard_files(spec['ibid']), shard_files(spec['ig'])):
            if os.path.getsize(p) != os.path.getsize(q):
                die(f'{p} and {q} differ in size: not the same tokens')

    log(f'{name}: sampling queries from {spec["ibid"]} (K={a.k}, seed {a.seed})')
    qs, cands, rng, tails = make_queries(spec, a.k, a.max_support, a.seed, a.heavy_candidates, a.infgram_replace)

    # The 1e4-1e5 set: count the candidates with ibid, keep those in range.
    cfile = os.path.join(raw_dir, f'{name}.candidates.jsonl')
    write_jsonl(cfile, [{'op': 'count', 'ids': c} for c in cands])
    counted, _, _ = run_ibid(binary, spec, cfile, 1)
    heavy = [c for c, r in zip(cands, counted) if HEAVY_LO <= r.get('count', -1) <= HEAVY_HI]
    heavy.sort()
    rng.shuffle(heavy)
    heavy = heavy[:a.k]
    occ = {tuple(c): r['count'] for c, r in zip(cands, counted) if 'count' in r}
    log(f'{name}: {len(cands)} candidate n-grams, {len(heavy)} taken with {HEAVY_LO:,}-{HEAVY_HI:,} occurrences')
    for i, c in enumerate(heavy):
        qs.append({'op': 'ntd', 'ids': c, 'max_support': a.max_support, 'id': f'ntd-heavy/{len(c)}/{i}',
                   'type': 'ntd-heavy', 'n': len(c), 'occurrences': occ[tuple(c)]})

    qfile = os.path.join(raw_dir, f'{name}.queries.jsonl')
    write_jsonl(qfile, [wire(q) for q in qs])
    by_id = {q['id']: q for q in qs}

    def attach(rows, engine):
        if len(rows) != len(qs):
            die(f'{name}/{engine}: {len(rows)} answers for {len(qs)} queries')
        for q, r in zip(qs, rows):
            if r.get('id') != q['id']:
                die(f'{name}/{engine}: answer for {r.get("id")} where {q["id"]} was expected')
            q.setdefault('answers', {})[engine] = r
            q.setdefault('us', {})[engine] = r.get('us_median')

    walls = {}
    log(f'{name}: ibid warm-up pass ({len(qs)} queries)')
    run_ibid(binary, spec, qfile, 1, ['--no-dist'])
    log(f'{name}: ibid timed, repeat {a.repeat}')
    rows, walls['ibid'], info = run_ibid(binary, spec, qfile, a.repeat)
    log(f'  {info}')
    attach(rows, 'ibid')
    write_jsonl(os.path.join(raw_dir, f'{name}.ibid.jsonl'), rows)
    if has_ig:
        log(f'{name}: infini-gram warm-up pass')
        run_ig(spec, qfile, 1, timed=False)
        for engine, extra in (('ig', ()), ('ig_pf0', IG_PREFETCH0)):
            log(f'{name}: infini-gram timed ({"default prefetch" if engine == "ig" else "prefetch depths 0"}), '
                f'repeat {a.repeat}')
            rows, walls[engine] = run_ig(spec, qfile, a.repeat, extra)
            attach(rows, engine)
            write_jsonl(os.path.join(raw_dir, f'{name}.{engine}.jsonl'), rows)

    errors = {e: sum(1 for q in qs if 'error' in q['answers'].get(e, {})) for e in walls}
    mismatches = []
    if has_ig:
        for q in qs:
            for ref, other in (('ig', 'ibid'), ('ig', 'ig_pf0')):
                d = diff(q, q['answers'][other], q['answers'][ref])
                if d:
                    m = {'index': name, 'engines': [other, ref], 'query': wire(q),
                         'diff': [{'field': f, other: x, ref: y} for f, x, y in d[:20]],
                         'fields_differing': len(d), 'answers': {other: q['answers'][other], ref: q['answers'][ref]}}
                    if q['op'] in ('ntd', 'infgram_ntd') and ends_a_shard(q['ids'], tails):
                        m['note'] = END_OF_SHARD_NOTE
                    mismatches.append(m)
    groups = []
    for t, bucket, members in group_rows(qs):
        g = {'index': name, 'type': t, 'bucket': bucket, 'queries': len(members)}
        for e in ('ibid', 'ig', 'ig_pf0'):
            g[e] = stats(members, e)
        if bucket == HEAVY:
            g['occurrences'] = [min(q['occurrences'] for q in members), max(q['occurrences'] for q in members)]
        groups.append(g)

    per_query = []
    for q in qs:
        ans = q['answers']['ibid']
        summary = {key: ans[key] for key in ('count', 'prompt_cnt', 'cont_cnt', 'suffix_len', 'approx') if key in ans}
        if 'result_by_token_id' in ans:
            summary['distinct'] = len(ans['result_by_token_id'])
        per_query.append({'id': q['id'], 'query': wire(q), 'type': q['type'], 'n': q['n'], 'ibid': summary,
                          'us_median': q['us'], 'us_min': {e: r.get('us_min') for e, r in q['answers'].items()},
                          **({'occurrences': q['occurrences']} if 'occurrences' in q else {})})
    return {'index': name, 'ibid_dir': spec['ibid'], 'ig_dir': spec['ig'] if has_ig else None,
            'token_width': spec['width'], 'eos': spec['eos'], 'queries': len(qs), 'heavy_found': len(heavy),
            'wall_s': walls, 'errors': errors, 'ibid_info': info, 'groups': groups, 'mismatches': mismatches,
            'per_query': per_query}


def short_answer(a, limit=160):
    """An ntd answer in one short line: prompt_cnt, approx, suffix_len, {token: cont_cnt}."""
    if 'error' in a:
        return f'error {a["error"]!r}'
    dist = a.get('result_by_token_id', {})
    body = ', '.join(f'{t}: {v["cont_cnt"]}' for t, v in dist.items())
    if len(body) > limit:
        body = body[:limit].rsplit(',', 1)[0] + ', ...'
    extra = f', suffix_len {a["suffix_len"]}' if 'suffix_len' in a else ''
    return f'prompt_cnt {a.get("prompt_cnt")}, approx {a.get("approx")}{extra}, {len(dist)} tokens {{{body}}}'


def markdown(results, cfg):
    lines = [
        f'Query latency, ibid (library, `benches/query_latency.rs`) vs infini-gram {cfg["infini_gram_version"]} '
        f'(`scripts/infinigram.py query --time`); {cfg["cpus"]} CPUs ({cfg["cpu"]}); '
        f'K={cfg["k"]} queries per n and type, repeat {cfg["repeat"]}, max_support {cfg["max_support"]}, '
        f'seed {cfg["seed"]}{" [--quick]" if cfg["quick"] else ""}; indexes from {cfg["build_dir"]}',
        '',
        '| index | query | n | queries | ibid median µs | ibid p99 µs | ig median µs | ig p99 µs '
        '| ig pf0 median µs | ig pf0 p99 µs | speedup | speedup vs pf0 |',
        '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in results:
        for g in r['groups']:
            ib, ig, pf = g['ibid'], g['ig'], g['ig_pf0']
            n = g['bucket'] if g['bucket'] != 'all n' else '**all n**'
            lines.append(
                f'| {g["index"]} | {g["type"]} | {n} | {g["queries"]} '
                f'| {fmt(ib and ib["median"])} | {fmt(ib and ib["p99"])} '
                f'| {fmt(ig and ig["median"])} | {fmt(ig and ig["p99"])} '
                f'| {fmt(pf and pf["median"])} | {fmt(pf and pf["p99"])} '
                f'| {speed(ig, ib)} | {speed(pf, ib)} |')
    lines.append('')
    lines.append('µs: per-query median of the repeats (us_median); median and p99 are over the queries of the row. '
                 'ig: infini-gram, default prefetch; ig pf0: --ds/--sa/--od-prefetch-depth 0. '
                 'speedup: infini-gram median / ibid median. infini-gram\'s times are taken in Python around the '
                 'pybind11 call, so they include the binding and the conversion of the answer to Python objects; '
                 'ibid\'s are taken around the Rust library call.')
    lines.append('')
    for r in results:
        heavy = next((g for g in r['groups'] if g['bucket'] == HEAVY), None)
        if heavy and heavy['ibid']:
            ok = heavy['ibid']['max'] <= 100
            lines.append(f'- {r["index"]}: ntd on {heavy["queries"]} contexts with '
                         f'{heavy["occurrences"][0]:,}-{heavy["occurrences"][1]:,} occurrences: ibid median '
                         f'{fmt(heavy["ibid"]["median"])} µs, p99 {fmt(heavy["ibid"]["p99"])} µs, max '
                         f'{fmt(heavy["ibid"]["max"])} µs: target ≤ 100 µs {"met" if ok else "NOT met"}')
        elif r['heavy_found'] == 0:
            lines.append(f'- {r["index"]}: no context with {HEAVY_LO:,}-{HEAVY_HI:,} occurrences found')
    lines.append('')
    for r in results:
        gaps = {}
        for q in r['per_query']:
            if q['type'] == 'infgram_prob' and 'suffix_len' in q['ibid']:
                g = len(q['query']['ids']) - q['ibid']['suffix_len']
                gaps[g] = gaps.get(g, 0) + 1
        if gaps:
            total = sum(gaps.values())
            lines.append(f'- {r["index"]}: infgram_prob context length − suffix_len (replaced token: '
                         f'{cfg["infgram_replace"]}): '
                         + ', '.join(f'{g}: {c / total:.0%}' for g, c in sorted(gaps.items())))
    lines.append('')
    for r in results:
        if r['ig_dir'] is None:
            lines.append(f'- {r["index"]}: ibid only ({r["queries"]} queries), errors {r["errors"]}')
            continue
        mm = [m for m in r['mismatches'] if m['engines'] == ['ibid', 'ig']]
        pf = [m for m in r['mismatches'] if m['engines'] == ['ig_pf0', 'ig']]
        lines.append(f'- {r["index"]}: {r["queries"]} queries; ibid ≠ infini-gram on {len(mm)}; infini-gram '
                     f'prefetch 0 ≠ default on {len(pf)}; errors {r["errors"]}')
        for m in mm[:10]:
            if m['query']['op'] in ('ntd', 'infgram_ntd'):
                d = '; '.join(f'{e} {short_answer(m["answers"][e])}' for e in ('ibid', 'ig'))
            else:
                d = '; '.join(f'{x["field"]}: ibid {json.dumps(x["ibid"])} vs ig {json.dumps(x["ig"])}'
                              for x in m['diff'][:3])
            lines.append(f'  - `{json.dumps(m["query"])}`: {d}' + (f'; note: {m["note"]}' if 'note' in m else ''))
        if len(mm) > 10:
            lines.append(f'  - ... {len(mm) - 10} more in results.json')
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='K=20 on data/bench-build-quick')
    ap.add_argument('--out', default=None, help='default data/bench-query (data/bench-query-quick with --quick)')
    ap.add_argument('--build-dir', default=None,
                    help='indexes from scripts/bench_build.py (default data/bench-build, -quick with --quick)')
    ap.add_argument('-k', type=int, default=None, help='queries per n and type (default 100, 20 with --quick)')
    ap.add_argument('--repeat', type=int, default=5, help='timed calls per query (default 5)')
    ap.add_argument('--max-support', type=int, default=1000)
    ap.add_argument('--seed', type=int, default=20240611)
    ap.add_argument('--heavy-candidates', type=int, default=None,
                    help='random positions whose 1-4-grams are counted for the 1e4-1e5 set (default 50*K)')
    ap.add_argument('--infgram-replace', choices=('first', 'random'), default='first',
                    help='which context token of an infgram_prob query gets a random id (default first)')
    ap.add_argument('--indexes', default='bytes,u16,gguf', help='comma-separated subset of bytes,u16,gguf')
    ap.add_argument('--skip-ig', action='store_true', help='ibid only')
    ap.add_argument('--bin', default=None, help='query_latency binary (default: cargo bench --no-run)')
    a = ap.parse_args()
    a.k = a.k if a.k is not None else (20 if a.quick else 100)
    if a.k < 1 or a.repeat < 1 or a.max_support < 1:
        die('-k, --repeat and --max-support must be positive')
    a.heavy_candidates = a.heavy_candidates if a.heavy_candidates is not None else 50 * a.k
    build_dir = os.path.abspath(a.build_dir or os.path.join(ROOT, 'data', 'bench-build-quick' if a.quick else 'bench-build'))
    out = os.path.abspath(a.out or os.path.join(ROOT, 'data', 'bench-query-quick' if a.quick else 'bench-query'))
    wanted = [s.strip() for s in a.indexes.split(',') if s.strip()]
    specs = [s for s in index_specs(build_dir) if s['name'] in wanted]
    if len(specs) != len(wanted):
        die(f'--indexes: unknown name in {a.indexes!r} (bytes, u16, gguf)')

    if not all(os.path.isdir(s['ibid']) and (s['ig'] is None or os.path.isdir(s['ig'])) for s in specs):
        log(f'{build_dir} is incomplete: running scripts/bench_build.py')
        cmd = [PY, BENCH_BUILD, '--out', build_dir] + (['--quick'] if a.quick else [])
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            die('bench_build.py failed')

    binary = os.path.abspath(a.bin) if a.bin else build_ibid_bench()
    raw_dir = os.path.join(out, 'raw')
    os.makedirs(raw_dir, exist_ok=True)
    try:
        import infini_gram  # noqa: F401
        from importlib.metadata import version
        igv = version('infini-gram')
    except Exception:  # noqa: BLE001
        igv = 'unknown'
    cpu = cpu_model('unknown')
    cfg = {'quick': a.quick, 'k': a.k, 'repeat': a.repeat, 'max_support': a.max_support, 'seed': a.seed,
           'heavy_candidates': a.heavy_candidates, 'infgram_replace': a.infgram_replace, 'build_dir': os.path.relpath(build_dir, ROOT),
           'ibid_binary': binary, 'infini_gram_version': igv, 'cpus': os.cpu_count(), 'cpu': cpu,
           'platform': platform.platform(), 'python': platform.python_version()}

    results = [bench_index(s, a, binary, raw_dir) for s in specs]
    md = markdown(results, cfg)
    write_results(out, md, {'config': cfg, 'results': results}, end='')
    log(f'wrote {out}/results.md, results.json and raw/')
    mism = sum(1 for r in results for m in r['mismatches'] if m['engines'] == ['ibid', 'ig'])
    if mism:
        log(f'{mism} ibid/infini-gram mismatches (see results.json "mismatches")')


if __name__ == '__main__':
    main()
