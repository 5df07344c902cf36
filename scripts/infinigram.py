#!/usr/bin/env python3
"""Reference harness around the PyPI `infini-gram` package (tested with 2.6.0).

Subcommands
-----------
index DIR --token-width {1,2}
    DIR already holds tokenized.K (+ offset.K) written by some other tool.
    Builds table.K for every shard with infini-gram's own `rust_indexing`
    binary, running the same three stages as infini_gram/indexing.py
    (make-part / merge / concat).  Prints one JSON line with wall time,
    children CPU time and children peak RSS.

index-text DATA_DIR --out OUT
    Emulates indexing.py's tokenize step for tokenizer=None / token_dtype=u8
    (raw UTF-8 bytes, separator 0xff), which indexing.py itself cannot run
    here because it imports numpy and transformers unconditionally.  Then
    builds table.0 like `index`.

query DIR --token-width {1,2}
    Opens DIR with infini_gram.engine.InfiniGramEngine and answers JSONL
    queries from stdin, one JSON line per query on stdout.

Only the standard library, scripts/benchlib.py and the installed infini_gram
package are used.
"""

import argparse
import functools
import glob
import gzip
import json
import math
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import infini_gram

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import shard_ids  # noqa: E402

IG_DIR = os.path.dirname(os.path.abspath(infini_gram.__file__))
RUST_INDEXING = os.path.join(IG_DIR, 'rust_indexing')
HACK = 100000  # infini_gram/indexing.py:15 (also rust_indexing merge --hacksize default)
# Substrings the C++ engine uses to classify *every* directory entry (full path
# string, first match wins, in this order).
ENGINE_KEYS = ('tokenized', 'table', 'offset', 'metadata', 'metaoff', 'unigram')


def eprint(*a):
    print(*a, file=sys.stderr, flush=True)


# Exit status 2 for bad input and arguments (as argparse's), 1 when rust_indexing fails.
die = functools.partial(benchlib.die, code=2)


def raise_nofile():
    """indexing.py:292 sets RLIMIT_NOFILE to --ulimit (default 1048576);
    here we just raise the soft limit as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------

def plan(ds_size, tw, mem_gb, cpus):
    """Same arithmetic as indexing.py:162-175, plus a guard: rust_indexing
    merge treats every part but the last as (len - hacksize) valid bytes, so a
    non-last part that is shorter than S + HACK silently corrupts the table
    (seen: 2 parts on a 246-byte file -> 184 entries instead of 123).  We
    therefore lower the number of parallel jobs until
    (total_jobs - 1) * S + HACK <= ds_size."""
    ratio = int(math.ceil(math.log2(ds_size) / 8))
    mem_bytes = int(mem_gb * 1024 ** 3)
    num_job_batches = 1
    while num_job_batches * (mem_bytes // (12 if tw == 1 else 8)) < ds_size:
        num_job_batches *= 2
    parallel_jobs = max(1, cpus)

    def s_of(total):
        S = ds_size // total
        if S % tw != 0:
            S += tw - S % tw
        return S

    while True:
        total_jobs = num_job_batches * parallel_jobs
        S = s_of(total_jobs)
        if total_jobs == 1 or (S > 0 and (total_jobs - 1) * S + HACK <= ds_size):
            break
        if parallel_jobs > 1:
            parallel_jobs -= 1
        else:
            die(f'cannot split {ds_size} bytes into {num_job_batches} batches safely; raise --cpu-mem-gb')
    return ratio, num_job_batches, parallel_jobs, total_jobs, S


def run_checked(cmd, log):
    p = subprocess.run(cmd, stdout=log, stderr=log)
    if p.returncode != 0:
        die(f'command failed (rc={p.returncode}): {" ".join(cmd)}', code=1)


def build_table(ds_path, sa_path, tw, mem_gb, cpus, tmp_root, log):
    ds_size = os.path.getsize(ds_path)
    if ds_size < 2 * tw:
        die(f'{ds_path}: too small ({ds_size} bytes)')
    if ds_size % tw != 0:
        die(f'{ds_path}: size {ds_size} is not a multiple of token width {tw}')
    tok_cnt = ds_size // tw
    ratio, nb, pj, total_jobs, S = plan(ds_size, tw, mem_gb, cpus)
    info = {'ds_path': ds_path, 'ds_size': ds_size, 'tok_cnt': tok_cnt, 'ratio': ratio,
            'num_job_batches': nb, 'parallel_jobs': pj, 'total_jobs': total_jobs}
    work = tempfile.mkdtemp(prefix='ig-build-', dir=tmp_root)  # name avoids ENGINE_KEYS
    try:
        parts_dir = os.path.join(work, 'parts')
        merged_dir = os.path.join(work, 'merged')
        out_file = os.path.join(work, 'sa.out')
        os.makedirs(parts_dir)
        os.makedirs(merged_dir)

        t0 = time.perf_counter()
        for batch_start in range(0, total_jobs, pj):
            procs = []
            for i in range(batch_start, min(batch_start + pj, total_jobs)):
                s, e = i * S, min((i + 1) * S + HACK, ds_size)
                cmd = [RUST_INDEXING, 'make-part', '--data-file', ds_path, '--parts-dir', parts_dir,
                       '--start-byte', str(s), '--end-byte', str(e), '--ratio', str(ratio),
                       '--token-width', str(tw)]
                procs.append((cmd, subprocess.Popen(cmd, stdout=log, stderr=log)))
            for cmd, p in procs:
                if p.wait() != 0:
                    die(f'make-part failed (rc={p.returncode}): {" ".join(cmd)}', code=1)
        t1 = time.perf_counter()
        run_checked([RUST_INDEXING, 'merge', '--data-file', ds_path, '--parts-dir', parts_dir,
                     '--merged-dir', merged_dir, '--num-threads', str(cpus), '--hacksize', str(HACK),
                     '--ratio', str(ratio), '--token-width', str(tw)], log)
        shutil.rmtree(parts_dir)
        t2 = time.perf_counter()
        # merge clamps its thread count for small inputs (it wrote a single
        # merged/0000 for a few-KB file even with --num-threads 4) while
        # concat blindly opens merged/0000..{num_threads-1}; indexing.py
        # passes --cpus to both and so panics on small shards.  Pass the
        # number of files merge actually produced.
        n_merged = len(os.listdir(merged_dir))
        run_checked([RUST_INDEXING, 'concat', '--data-file', ds_path, '--merged-dir', merged_dir,
                     '--merged-file', out_file, '--num-threads', str(n_merged), '--ratio', str(ratio),
                     '--token-width', str(tw)], log)
        t3 = time.perf_counter()
        got = os.path.getsize(out_file)
        if got != tok_cnt * ratio:
            die(f'{ds_path}: rust_indexing wrote {got} bytes, expected tok_cnt*ratio = {tok_cnt * ratio}', code=1)
        os.replace(out_file, sa_path)
        info.update(make_part_s=t1 - t0, merge_s=t2 - t1, concat_s=t3 - t2, merged_files=n_merged,
                    table_size=got)
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_offsets(d, k, tw, full):
    """Warnings only: the engine assumes offset.K[0] == 0 and that every
    document starts with one separator token (all 0xff bytes)."""
    od_path = os.path.join(d, f'offset.{k}')
    ds_path = os.path.join(d, f'tokenized.{k}')
    if not os.path.exists(od_path):
        eprint(f'warning: {od_path} missing (the engine needs it to open the index)')
        return
    n = os.path.getsize(od_path)
    if n % 8 != 0 or n == 0:
        eprint(f'warning: {od_path}: size {n} is not a positive multiple of 8')
        return
    sep = b'\xff' * tw
    ds_size = os.path.getsize(ds_path)
    with open(od_path, 'rb') as fo, open(ds_path, 'rb') as fd:
        cnt = n // 8 if full else min(n // 8, 16)
        prev = -1
        for i in range(cnt):
            (o,) = struct.unpack('<Q', fo.read(8))
            if i == 0 and o != 0:
                eprint(f'warning: {od_path}[0] = {o}, engine expects 0')
            if o <= prev or o >= ds_size:
                eprint(f'warning: {od_path}[{i}] = {o} not increasing / out of range')
                return
            fd.seek(o)
            if fd.read(tw) != sep:
                eprint(f'warning: tokenized.{k} has no separator at offset.{k}[{i}] = {o}')
                return
            prev = o


def build_all(d, tw, mem_gb, cpus, tmp_root, force, skip_existing, verbose, validate, extra=None):
    d = os.path.abspath(d)
    if not os.path.isdir(d):
        die(f'{d} is not a directory')
    ks = shard_ids(d, regular_only=True)
    if not ks:
        die(f'no tokenized.K files in {d}')
    existing = [k for k in ks if os.path.exists(os.path.join(d, f'table.{k}'))]
    if existing and not (force or skip_existing):
        die(f'table.K already exists for shards {existing} in {d}; pass --force or --skip-existing')
    for k in ks:
        check_offsets(d, k, tw, validate)
    raise_nofile()
    tmp_root = os.path.abspath(tmp_root) if tmp_root else d
    log = sys.stderr if verbose else subprocess.DEVNULL

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = time.perf_counter()
    shards = []
    for k in ks:
        sa_path = os.path.join(d, f'table.{k}')
        if skip_existing and os.path.exists(sa_path):
            continue
        info = build_table(os.path.join(d, f'tokenized.{k}'), sa_path, tw, mem_gb, cpus, tmp_root, log)
        info['shard'] = k
        shards.append(info)
    wall = time.perf_counter() - w0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    utime = ru1.ru_utime - ru0.ru_utime
    stime = ru1.ru_stime - ru0.ru_stime
    out = {
        'tool': 'infini-gram rust_indexing', 'dir': d, 'token_width': tw,
        'cpus': cpus, 'cpu_mem_gb': mem_gb,
        'wall_s': round(wall, 6),
        'cpu_user_s': round(utime, 6), 'cpu_sys_s': round(stime, 6), 'cpu_s': round(utime + stime, 6),
        # ru_maxrss is in KiB on Linux; it is the largest single child, not a sum.
        'peak_rss_children_kib': ru1.ru_maxrss,
        # children reaped before indexing started (e.g. a pyenv shim's helpers); if
        # this equals peak_rss_children_kib the indexer never exceeded it.
        'peak_rss_children_kib_before': ru0.ru_maxrss,
        'shards': shards,
    }
    if extra:
        out.update(extra)
    return out


def cmd_index(a):
    out = build_all(a.dir, a.token_width, a.cpu_mem_gb, a.cpus, a.temp_dir, a.force,
                    a.skip_existing, a.verbose, a.validate)
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------
# index-text (tokenizer=None, u8 only)
# --------------------------------------------------------------------------

def load_lines(path):
    # mirrors indexing.py:21-39
    if path.endswith('.gz'):
        with gzip.open(path, 'rt', encoding='utf-8') as f:
            return f.readlines()
    if path.endswith('.jsonl'):
        with open(path, encoding='utf-8') as f:
            return f.readlines()
    if path.endswith('.zst'):
        die(f'{path}: .zst needs the zstandard module, not supported here')
    die(f'{path}: unknown file type (indexing.py accepts .jsonl, .gz, .zst)')


def cmd_index_text(a):
    if a.token_width != 1:
        die('without a tokenizer infini-gram indexes raw UTF-8 bytes, i.e. --token-width 1 only '
            '(indexing.py:44-45 writes bytes; with u16 the 2-byte separator would misalign them)')
    data_dir = os.path.abspath(a.data_dir).rstrip('/')
    out_dir = os.path.abspath(a.out)
    os.makedirs(out_dir, exist_ok=True)
    ds_path = os.path.join(out_dir, 'tokenized.0')
    if os.path.exists(ds_path) and not a.force:
        die(f'{ds_path} exists; pass --force')
    t0 = time.perf_counter()
    paths = sorted(glob.glob(f'{data_dir}/**/*.json*', recursive=True))  # indexing.py:87-88
    if not paths:
        die(f'no *.json* files under {data_dir}')
    n_docs = 0
    pos = 0
    mpos = 0
    with open(ds_path, 'wb') as fds, open(os.path.join(out_dir, 'offset.0'), 'wb') as fod:
        fmt = fom = None
        if a.add_metadata:
            fmt = open(os.path.join(out_dir, 'metadata.0'), 'w')
            fom = open(os.path.join(out_dir, 'metaoff.0'), 'wb')
        for path in paths:
            rel = path[len(data_dir) + 1:]
            for linenum, line in enumerate(load_lines(path)):
                if not line.strip():
                    continue  # indexing.py would crash on a blank line
                meta = json.loads(line.strip('\n'))
                content = b'\xff' + meta.pop('text').encode('utf-8')  # indexing.py:45,108
                fds.write(content)
                fod.write(struct.pack('<Q', pos))
                pos += len(content)
                if fmt is not None:
                    mt = json.dumps({'path': rel, 'linenum': linenum, 'metadata': meta}) + '\n'
                    fmt.write(mt)
                    fom.write(struct.pack('<Q', mpos))
                    mpos += len(mt.encode('utf-8'))
                n_docs += 1
        if fmt is not None:
            fmt.close()
            fom.close()
    tok_s = time.perf_counter() - t0
    out = build_all(out_dir, 1, a.cpu_mem_gb, a.cpus, a.temp_dir, True, False, a.verbose, False,
                    extra={'tokenize_s': round(tok_s, 6), 'docs': n_docs, 'bytes': pos})
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------
# query
# --------------------------------------------------------------------------

def scan_like_engine(d, tw):
    """Replicates the engine's directory scan and size derivations so that a
    bad directory gives an error instead of a segfault (the shipped .so is
    built without asserts)."""
    groups = {k: [] for k in ENGINE_KEYS}
    for name in os.listdir(d):
        p = './' + name
        for k in ENGINE_KEYS:
            if k in p:
                groups[k].append(name)
                break
    for k in groups:
        groups[k].sort()
    ds, sa, od, mt, om, ug = (groups[k] for k in ENGINE_KEYS)
    if not ds:
        die(f'no tokenized* files in {d}')
    if len(sa) != len(ds) or len(od) != len(ds):
        die(f'engine would pair files by sorted name and they do not match: tokenized={ds} table={sa} offset={od}')
    if not (len(mt) == 0 or len(mt) == len(ds)) or len(om) != len(mt):
        die(f'metadata/metaoff mismatch: metadata={mt} metaoff={om}')
    if not (len(ug) == 0 or len(ug) == len(ds)):
        die(f'unigram mismatch: {ug}')
    shards = []
    for i in range(len(ds)):
        ds_size = os.path.getsize(os.path.join(d, ds[i]))
        sa_size = os.path.getsize(os.path.join(d, sa[i]))
        od_size = os.path.getsize(os.path.join(d, od[i]))
        if ds_size == 0 or ds_size % tw:
            die(f'{ds[i]}: size {ds_size} not a positive multiple of {tw}')
        tok_cnt = ds_size // tw
        if sa_size % tok_cnt or sa_size == 0:
            die(f'{sa[i]}: size {sa_size} not a positive multiple of tok_cnt {tok_cnt}')
        if od_size % 8 or od_size == 0:
            die(f'{od[i]}: size {od_size} not a positive multiple of 8')
        shards.append({'files': [ds[i], sa[i], od[i]], 'ds_size': ds_size, 'tok_cnt': tok_cnt,
                       'ptr_size': sa_size // tok_cnt, 'doc_cnt': od_size // 8})
    return shards


def _seg(x):
    return [list(p) for p in x]


def _doc(r):
    return {'doc_ix': r.doc_ix, 'doc_len': r.doc_len, 'disp_len': r.disp_len,
            'needle_offset': r.needle_offset, 'metadata': r.metadata,
            'token_ids': list(r.token_ids), 'blocked': r.blocked}


def _dist(m):
    # keys are token ids (ints); JSON object keys become strings
    return {str(t): {'cont_cnt': v.cont_cnt, 'prob': v.prob} for t, v in m.items()}


class Runner:
    def __init__(self, ige, a, shards):
        self.w = ige            # InfiniGramEngine (python wrapper)
        self.e = ige.engine     # cpp_engine.Engine_U8/U16
        self.a = a
        self.shards = shards

    def ids(self, q, key='ids'):
        v = q.get(key, [])
        if not self.w.check_query_ids(v, allow_empty=True):
            raise ValueError(f'{key} must be a list of integers in range [0, {self.w.token_id_max}]')
        return v

    def tok(self, q, key='next'):
        v = q.get(key)
        if not (type(v) == int and 0 <= v <= self.w.token_id_max):
            raise ValueError(f'{key} must be an integer in range [0, {self.w.token_id_max}]')
        return v

    def pos_int(self, q, key, default):
        v = q.get(key, default)
        if not (type(v) == int and v > 0):
            raise ValueError(f'{key} must be a positive integer')
        return v

    def cnf(self, q):
        v = q.get('cnf')
        if not self.w.check_cnf(v):
            raise ValueError('cnf must be a non-empty triply nested list of token ids')
        return v

    def shard_rank(self, q, key, limit_of):
        s = q.get('s', 0)
        if not (type(s) == int and 0 <= s < len(self.shards)):
            raise ValueError(f's must be in [0, {len(self.shards)})')
        v = q.get(key)
        if not (type(v) == int and 0 <= v < limit_of(s)):
            raise ValueError(f'{key} out of range')
        return s, v

    def prepare(self, q):
        """Validate outside the timed region; return (callable, converter)."""
        op = q.get('op')
        e = self.e
        a = self.a
        if op == 'count':
            ids = self.ids(q)
            return (lambda: e.count(input_ids=ids)), (lambda r: {'count': r.count, 'approx': r.approx})
        if op == 'prob':
            ids, nxt = self.ids(q), self.tok(q)
            return (lambda: e.prob(prompt_ids=ids, cont_id=nxt)), \
                (lambda r: {'prompt_cnt': r.prompt_cnt, 'cont_cnt': r.cont_cnt, 'prob': r.prob})
        if op == 'ntd':
            ids, ms = self.ids(q), self.pos_int(q, 'max_support', a.max_support)
            return (lambda: e.ntd(prompt_ids=ids, max_support=ms)), \
                (lambda r: {'prompt_cnt': r.prompt_cnt, 'result_by_token_id': _dist(r.result_by_token_id),
                            'approx': r.approx})
        if op == 'infgram_prob':
            ids, nxt = self.ids(q), self.tok(q)
            return (lambda: e.infgram_prob(prompt_ids=ids, cont_id=nxt)), \
                (lambda r: {'prompt_cnt': r.prompt_cnt, 'cont_cnt': r.cont_cnt, 'prob': r.prob,
                            'suffix_len': r.suffix_len})
        if op == 'infgram_ntd':
            ids, ms = self.ids(q), self.pos_int(q, 'max_support', a.max_support)
            return (lambda: e.infgram_ntd(prompt_ids=ids, max_support=ms)), \
                (lambda r: {'prompt_cnt': r.prompt_cnt, 'result_by_token_id': _dist(r.result_by_token_id),
                            'approx': r.approx, 'suffix_len': r.suffix_len})
        if op == 'find':
            ids = self.ids(q)
            return (lambda: e.find(input_ids=ids)), \
                (lambda r: {'cnt': r.cnt, 'segment_by_shard': _seg(r.segment_by_shard)})
        if op == 'search_docs':
            ids = self.ids(q)
            mn, mdl = self.pos_int(q, 'maxnum', 1), self.pos_int(q, 'max_disp_len', 1000)
            return (lambda: e.search_docs(input_ids=ids, maxnum=mn, max_disp_len=mdl)), \
                (lambda r: {'cnt': r.cnt, 'approx': r.approx, 'idxs': list(r.idxs),
                            'documents': [_doc(d) for d in r.docs]})
        if op == 'count_cnf':
            cnf = self.cnf(q)
            mcf, mdt = self.pos_int(q, 'max_clause_freq', 50000), self.pos_int(q, 'max_diff_tokens', 100)
            return (lambda: e.count_cnf(cnf=cnf, max_clause_freq=mcf, max_diff_tokens=mdt)), \
                (lambda r: {'count': r.count, 'approx': r.approx})
        if op == 'search_docs_cnf':
            cnf = self.cnf(q)
            mn, mdl = self.pos_int(q, 'maxnum', 1), self.pos_int(q, 'max_disp_len', 1000)
            mcf, mdt = self.pos_int(q, 'max_clause_freq', 50000), self.pos_int(q, 'max_diff_tokens', 100)
            return (lambda: e.search_docs_cnf(cnf=cnf, maxnum=mn, max_disp_len=mdl,
                                              max_clause_freq=mcf, max_diff_tokens=mdt)), \
                (lambda r: {'cnt': r.cnt, 'approx': r.approx, 'idxs': list(r.idxs),
                            'documents': [_doc(d) for d in r.docs]})
        if op == 'get_doc_by_rank':
            s, rank = self.shard_rank(q, 'rank', lambda s: self.shards[s]['tok_cnt'])
            mdl = self.pos_int(q, 'max_disp_len', 1000)
            return (lambda: e.get_doc_by_rank(s=s, rank=rank, max_disp_len=mdl)), _doc
        if op == 'get_doc_by_ptr':
            tw = self.a.token_width
            s, ptr = self.shard_rank(q, 'ptr', lambda s: self.shards[s]['ds_size'])
            if ptr % tw:
                raise ValueError(f'ptr must be a multiple of {tw}')
            mdl = self.pos_int(q, 'max_disp_len', 1000)
            return (lambda: e.get_doc_by_ptr(s=s, ptr=ptr, max_disp_len=mdl)), _doc
        if op == 'get_doc_by_ix':
            ix = q.get('doc_ix')
            total = e.get_total_doc_cnt()
            if not (type(ix) == int and 0 <= ix < total):
                raise ValueError(f'doc_ix must be in [0, {total})')
            mdl = self.pos_int(q, 'max_disp_len', 1000)
            return (lambda: e.get_doc_by_ix(doc_ix=ix, max_disp_len=mdl)), _doc
        if op == 'creativity':
            ids = self.ids(q)
            return (lambda: e.creativity(input_ids=ids)), (lambda r: {'rs': list(r.rs)})
        if op == 'info':
            def info():
                n = e.get_num_shards()
                return {
                    'num_shards': n,
                    'tok_cnt': [e.get_tok_cnt(s=s) for s in range(n)],
                    'ds_size': [e.get_ds_size(s=s) for s in range(n)],
                    'total_doc_cnt': e.get_total_doc_cnt(),
                    # derived from file sizes exactly as the engine does (not exposed by it):
                    'doc_cnt': [sh['doc_cnt'] for sh in self.shards],
                    'ptr_size': [sh['ptr_size'] for sh in self.shards],
                    'files': [sh['files'] for sh in self.shards],
                    'token_width': a.token_width, 'eos_token_id': a.eos, 'vocab_size': a.vocab_size,
                    'version': a.version,
                }
            return info, (lambda r: r)
        raise ValueError(f'unknown op {op!r}')


def cmd_query(a):
    d = os.path.abspath(a.dir)
    if not os.path.isdir(d):
        die(f'{d} is not a directory')
    tw = a.token_width
    if a.vocab_size is None:
        a.vocab_size = 65535 if tw == 2 else 255
    if a.eos is None:
        a.eos = a.vocab_size - 1
    if not (0 <= a.eos < a.vocab_size <= (1 << (8 * tw)) - 1):
        die('need 0 <= eos < vocab_size <= 2^(8*token_width) - 1 (engine.py:21, and T-typed in C++)')
    shards = scan_like_engine(d, tw)
    # The engine classifies entries by substring of the *full path* string, so
    # open via "." to keep DIR's own name (e.g. ".../tables/...") out of it.
    os.chdir(d)
    from infini_gram.engine import InfiniGramEngine
    ige = InfiniGramEngine(index_dir='.', eos_token_id=a.eos, vocab_size=a.vocab_size, version=a.version,
                           token_dtype='u16' if tw == 2 else 'u8', load_to_ram=a.load_to_ram,
                           ds_prefetch_depth=a.ds_prefetch_depth, sa_prefetch_depth=a.sa_prefetch_depth,
                           od_prefetch_depth=a.od_prefetch_depth, max_support=a.max_support)
    r = Runner(ige, a, shards)
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        q = None
        try:
            q = json.loads(line)
            fn, conv = r.prepare(q)
            times = []
            res = None
            for _ in range(max(1, a.repeat)):
                t0 = time.perf_counter_ns()
                res = fn()
                t1 = time.perf_counter_ns()
                times.append((t1 - t0) / 1000.0)
            obj = conv(res)
            if a.time:
                obj['us'] = times[0]
                if len(times) > 1:
                    obj['us_min'] = min(times)
                    obj['us_median'] = statistics.median(times)
        except Exception as ex:  # noqa: BLE001 - report per-query errors, keep going
            obj = {'error': f'{type(ex).__name__}: {ex}'}
        if isinstance(q, dict) and 'id' in q:
            obj['id'] = q['id']
        out.write(json.dumps(obj) + '\n')
        out.flush()


# --------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)

    def build_opts(sp):
        sp.add_argument('--cpu-mem-gb', type=float, default=8.0,
                        help='indexing.py --mem: decides the number of job batches (default 8)')
        sp.add_argument('--cpus', type=int, default=os.cpu_count() or 1,
                        help='parallel make-part jobs and merge/concat threads (indexing.py --cpus)')
        sp.add_argument('--temp-dir', default=None, help='where parts/merged go (default: inside the index dir)')
        sp.add_argument('--verbose', action='store_true', help="show rust_indexing's output on stderr")

    s = sub.add_parser('index', help='build table.K for existing tokenized.K with rust_indexing')
    s.add_argument('dir')
    s.add_argument('--token-width', type=int, choices=[1, 2], required=True)
    g = s.add_mutually_exclusive_group()
    g.add_argument('--force', action='store_true', help='overwrite existing table.K')
    g.add_argument('--skip-existing', action='store_true', help='leave existing table.K alone (like indexing.py)')
    s.add_argument('--validate', action='store_true', help='check every offset points at a separator')
    build_opts(s)
    s.set_defaults(func=cmd_index)

    s = sub.add_parser('index-text', help='raw UTF-8 bytes (u8) index of *.json* docs, like indexing.py w/o tokenizer')
    s.add_argument('data_dir')
    s.add_argument('--out', required=True)
    s.add_argument('--token-width', type=int, choices=[1, 2], default=1)
    s.add_argument('--add-metadata', action='store_true')
    s.add_argument('--force', action='store_true')
    build_opts(s)
    s.set_defaults(func=cmd_index_text)

    s = sub.add_parser('query', help='answer JSONL queries from stdin with InfiniGramEngine')
    s.add_argument('dir')
    s.add_argument('--token-width', type=int, choices=[1, 2], required=True)
    s.add_argument('--eos', type=int, default=None, help='eos_token_id (default vocab_size-1)')
    s.add_argument('--vocab-size', type=int, default=None, help='default 65535 (u16) / 255 (u8)')
    s.add_argument('--version', type=int, choices=[4, 5], default=4)
    s.add_argument('--max-support', type=int, default=1000, help='default max_support for ntd ops')
    s.add_argument('--load-to-ram', action='store_true')
    s.add_argument('--ds-prefetch-depth', type=int, default=1)
    s.add_argument('--sa-prefetch-depth', type=int, default=3)
    s.add_argument('--od-prefetch-depth', type=int, default=3)
    s.add_argument('--time', action='store_true', help='add "us": latency of the C++ call in microseconds')
    s.add_argument('--repeat', type=int, default=1, help='with --time: run each query N times, add us_min/us_median')
    s.set_defaults(func=cmd_query)

    a = p.parse_args()
    if getattr(a, 'sa_prefetch_depth', None) is not None and a.sa_prefetch_depth < a.ds_prefetch_depth:
        die('--sa-prefetch-depth must be >= --ds-prefetch-depth (engine.py:24)')
    a.func(a)


if __name__ == '__main__':
    main()
