"""What the benchmark and test scripts under scripts/ share: the repository's paths, progress and
error lines, shard files, Markdown tables and results files, the machine's CPU, the test model,
starting and stopping ibid's and llama.cpp's servers, and the pricing of a batch on an
`ibid calibrate` cost curve.

The scripts import it, the index tools scripts/infinigram.py and scripts/to_u16.py included, so
it uses the standard library only and does nothing on import.
"""

import json
import os
import socket
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IBID = os.path.join(ROOT, 'target', 'release', 'ibid')
# llama.cpp's tools, as scripts/build_llama_tools.sh builds them
LLAMA_BIN = os.path.join(ROOT, 'data', 'llama.cpp-build', 'build', 'bin')


# ---------------------------------------------------------------- messages

def logger(tag):
    """A log(*parts) that prints '[tag] parts' on stderr, flushed: progress, kept apart from the
    results a script prints on stdout."""
    def log(*parts):
        print(f'[{tag}]', *parts, file=sys.stderr, flush=True)
    return log


def die(msg, code=1):
    """'SCRIPT: error: msg' on stderr (SCRIPT: the script being run, as argparse names it), then
    exit with `code`."""
    print(f'{os.path.basename(sys.argv[0])}: error: {msg}', file=sys.stderr, flush=True)
    sys.exit(code)


def repo_relative(path):
    """`path` relative to the repository root when it is an absolute path inside it, else as
    given: shorter paths in reports and commands."""
    return os.path.relpath(path, ROOT) if os.path.isabs(path) and path.startswith(ROOT + os.sep) else path


# ---------------------------------------------------------------- files and reports

def shard_ids(d, regular_only=False):
    """The numbers K of the files named exactly tokenized.K in folder d, sorted; with
    `regular_only`, of regular files only."""
    ks = []
    for name in os.listdir(d):
        suffix = name[len('tokenized.'):]
        if name.startswith('tokenized.') and suffix.isdigit() and \
                (not regular_only or os.path.isfile(os.path.join(d, name))):
            ks.append(int(suffix))
    return sorted(ks)


def md_table(header, rows, align=None):
    """A Markdown table. `align`: one delimiter cell per column; by default the first column
    left-aligned ('---') and the others right-aligned ('---:'), as numbers read best."""
    align = align or ['---'] + ['---:'] * (len(header) - 1)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(align) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_results(out, md, data, end='\n'):
    """OUT/results.md (md, also printed, followed by `end`) and OUT/results.json (data)."""
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write(md)
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(data, f, indent=1)
    print(md, end=end)


# ---------------------------------------------------------------- machine and model

def cpu_model(unknown='?'):
    """The CPU's model name from /proc/cpuinfo; `unknown` where it has none."""
    try:
        with open('/proc/cpuinfo') as f:
            return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), unknown)
    except OSError:
        return unknown


def rss_kib(pid, missing=None):
    """A process's resident set size (VmRSS) in KiB; `missing` when it is gone or has none (a
    zombie, a kernel thread)."""
    try:
        with open(f'/proc/{pid}/status', 'rb') as f:
            for line in f:
                if line.startswith(b'VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return missing


def model_path():
    """The path of the Gemma 3 270M Q4_K_M GGUF file scripts/setup.sh installed, as
    scripts/model_path.sh prints it (its errors, if any, go to stderr)."""
    return subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'model_path.sh')], cwd=ROOT, check=True,
                          stdout=subprocess.PIPE, text=True).stdout.strip()


# ---------------------------------------------------------------- servers

def free_port():
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_ready(url, proc, what):
    """Wait until the server at `url` answers GET /health; die when its process `proc` exits
    first or it has not answered after 600 tries (five minutes or more)."""
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + '/health', timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            if proc.poll() is not None:
                die(f'{what} exited')
            time.sleep(0.5)
    die(f'{what} did not become ready')


def stop_server(proc, timeout=60):
    """SIGINT (ibid serve and llama-server both shut down gracefully on it), then kill if it
    lingers."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_ibid(model, threads, extra=(), env=None, log_path=None):
    """`ibid serve` (target/release/ibid) for `model` on a loopback port of its choosing
    (--addr 127.0.0.1:0), `extra` flags after serve's own, `env` added to this environment.
    Returns (process, URL): the URL from the "serving ... on http://..." line it prints once it
    listens, None when it exits first. Its stderr is read to the end on a daemon thread (a server
    blocked on a full pipe stops answering); with `log_path`, every line of it is kept there."""
    proc = subprocess.Popen([IBID, '--threads', str(threads), 'serve', '--model', model, '--addr', '127.0.0.1:0',
                             *extra], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    log = open(log_path, 'w', buffering=1) if log_path else None
    url = None
    for line in proc.stderr:
        if log:
            log.write(line)
        if ' serving ' in line:
            url = line.strip().rsplit(' ', 1)[1]
            break

    def drain():
        for line in proc.stderr:
            if log:
                log.write(line)
        if log:
            log.close()
    threading.Thread(target=drain, daemon=True).start()
    return proc, url


def start_llama_server(model, threads, spec_type, log_path, extra=()):
    """llama-server (from scripts/build_llama_tools.sh) for `model` on a free loopback port, with
    ibid's context size (4096) and flash attention on, speculative decoding `spec_type` (none or
    an n-gram mode) and `extra` flags; its stdout and stderr go to `log_path`. Returns (process,
    URL); the process's args are the command."""
    port = free_port()
    cmd = [os.path.join(LLAMA_BIN, 'llama-server'), '-m', model, '-t', str(threads), '-c', '4096', '-fa', 'on',
           *extra, '--port', str(port), '--host', '127.0.0.1', '--spec-type', spec_type]
    with open(log_path, 'wb') as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return proc, f'http://127.0.0.1:{port}'


# ---------------------------------------------------------------- cost curve

def cost_curve(path):
    """The relative cost of a batch of n rows on the cost curve of an `ibid calibrate` file (its
    "seconds": (n, seconds) points, sorted by n as ibid writes them): a function of n, see
    relative_cost."""
    points = [(int(n), float(t)) for n, t in json.load(open(path))['seconds']]
    return lambda n: relative_cost(points, n)


def relative_cost(points, n):
    """Cost of a batch of `n` rows relative to a batch of one on the curve through `points`
    ((n, seconds), sorted by n): the same rule, step for step, as `CostCurve::relative` in
    crates/ibid-generate/src/calibrate.rs. It must stay the same: ibid's drafter sizes its trees by that function's
    prices (crates/ibid-generate/src/draft/budget.rs), so pricing a run's steps otherwise would model another cost
    than the one ibid chose its budgets by.

    A measured size: its own time. Otherwise odd and even sizes follow their own curves (sizes
    above 1 of n's parity) when those have points on both sides of n, or at least two below it;
    else the whole curve is used. Between points: linear; past the last: the slope of the last
    two; before the first: the first point's time. Relative to the first point's time (size 1);
    an empty curve prices n rows at n."""
    if not points:
        return float(n)
    base = max(points[0][1], 1e-12)
    for m, t in points:
        if m == n:
            return t / base
    same_parity = [(m, t) for m, t in points if m > 1 and m % 2 == n % 2]
    below = sum(1 for m, _ in same_parity if m < n)
    above = len(same_parity) - below
    bracketed = (below >= 1 and above >= 1) or (above == 0 and below >= 2)
    return _interpolate(same_parity if bracketed else points, n) / base


def _interpolate(points, n):
    """Seconds at `n` on the piecewise-linear curve through `points` (sorted by size), extended
    past its ends by its first point and its last two points' slope: `interpolate` in
    crates/ibid-generate/src/calibrate.rs."""
    at = sum(1 for m, _ in points if m < n)
    if at == 0:
        return points[0][1]
    if at == len(points):
        (a, ta), (b, tb) = points[max(len(points) - 2, 0)], points[-1]
        slope = (tb - ta) / (b - a) if b > a else 0.0
        return tb + slope * (n - b)
    (a, ta), (b, tb) = points[at - 1], points[at]
    return ta + (tb - ta) * (n - a) / (b - a)
