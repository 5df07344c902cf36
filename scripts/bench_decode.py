#!/usr/bin/env python3
"""Plain greedy decoding speed: ibid vs. llama.cpp's own tools, same model, threads and prompts.

Usage:
  scripts/bench_decode.py [--threads 2] [--max-tokens 128] [--prompts 5] [--out data/bench-decode]
                          [--model PATH] [--llama-bin DIR] [--rounds 1] [--no-calibrate]

The llama.cpp tools come from scripts/build_llama_tools.sh (run first if they are missing): the
same llama.cpp source and CMake settings that ibid links through llama-cpp-sys-2.

1. Interleaved runs, one process at a time: for each prompt (the first --prompt-chars characters
   of a CPython stdlib module, cut at a line end: ~200 Gemma tokens), ibid and llama-completion
   back to back, the order alternating from prompt to prompt (ibid first on even prompts,
   llama.cpp first on odd ones) so that slow drifts hit both alike:
     ibid --threads T generate --model M --prompt-file P --max-tokens N --draft none --stats
     llama-completion -m M -f P -n N -t T --temp 0 --top-k 1 -no-cnv --no-display-prompt
                      --no-escape --no-warmup -c 4096 -b 128 -ub 128 -fa on
   The llama.cpp flags give ibid's context settings (n_ctx 4096, n_batch = n_ubatch = 128, flash
   attention on), greedy sampling, plain completion (no chat template), the prompt verbatim
   (no escape processing) and no warm-up run (ibid does none either).
   Decode speed: ibid's --stats tokens_per_s = generated tokens / wall time of the decode loop
   (one single-token llama_decode per token, plus its argmax and text streaming).
   llama.cpp: "eval time = X ms / R runs" from its perf print = single-token llama_decode calls
   only (sampling excluded): R/X tokens/s. Reported also: llama.cpp with its sampling time added
   ("eval+sampling"), the closest to what ibid's clock covers.
   (llama-simple is not used: it has no thread option and always runs 4 threads.)
   The greedy texts of both are compared per prompt.
2. llama-bench -m M -t T -p 0 -n N -r 3 (text generation tgN) as a second reference, once with
   its defaults and once with -fa 1 (ibid's flash-attention setting).
3. ibid --threads T calibrate --model M --sizes 1,2,3,4,5,6,8,10,12,16,20,24,32,40,48,64
   (time of one verification batch of N tokens, relative to N = 1).

For every run the CPU time that other processes used meanwhile is measured (/proc/stat minus the
child's own rusage) and reported: decode timings on a 2-core machine are only meaningful when it
is otherwise idle (with OpenMP, a busy core can slow decoding many times over). The script waits
(--wait-idle, up to 600 s) for the machine to go quiet before timing, and reruns a prompt pair
(--retries 2) during which other processes used more than 0.1 cores.

Writes OUT/results.md (printed at the end), OUT/results.json and OUT/logs/*, OUT/prompts/*.
"""

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (IBID, LLAMA_BIN, ROOT, cpu_model, die, logger, md_table, model_path,  # noqa: E402
                      repo_relative, write_results)

PROMPT_MODULES = ['textwrap.py', 'json/__init__.py', 'heapq.py', 'argparse.py', 'os.py',
                  'shutil.py', 'functools.py', 'contextlib.py']
CALIBRATE_SIZES = '1,2,3,4,5,6,8,10,12,16,20,24,32,40,48,64'
CLK_TCK = os.sysconf('SC_CLK_TCK')
FA = {-1: 'auto', 0: 'off', 1: 'on', True: 'on', False: 'off'}


log = logger('bench_decode')


def cmd_str(cmd):
    return ' '.join(shlex.quote(repo_relative(c)) for c in cmd)


def cpu_busy_s():
    """System-wide busy CPU seconds so far (all cores), from /proc/stat."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    busy = sum(v[:8]) - idle                   # guest time is already in user/nice
    return busy / CLK_TCK


def run(cmd, log_prefix, timeout=3600):
    """Run cmd with stdin closed; stdout/stderr to files. Returns dict with wall, child CPU, and
    the CPU seconds other processes used meanwhile."""
    out_path, err_path = log_prefix + '.out', log_prefix + '.err'
    busy0, t0 = cpu_busy_s(), time.monotonic()
    with open(out_path, 'wb') as out, open(err_path, 'wb') as err:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except KeyboardInterrupt:
            p.kill()
            raise
    wall = time.monotonic() - t0
    busy = cpu_busy_s() - busy0
    p.returncode = os.waitstatus_to_exitcode(status)
    child_cpu = ru.ru_utime + ru.ru_stime
    with open(out_path, 'rb') as f:
        stdout = f.read().decode('utf-8', 'replace')
    with open(err_path, 'rb') as f:
        stderr = f.read().decode('utf-8', 'replace')
    if p.returncode != 0:
        die(f'{cmd_str(cmd)} exited with {p.returncode}; see {err_path}:\n{stderr[-3000:]}')
    foreign = max(0.0, busy - child_cpu)
    return {'stdout': stdout, 'stderr': stderr, 'wall_s': wall, 'child_cpu_s': child_cpu,
            'foreign_cpu_s': foreign, 'foreign_share': foreign / max(wall, 1e-9)}


def idle_share(seconds=2.0):
    b0, t0 = cpu_busy_s(), time.monotonic()
    time.sleep(seconds)
    return (cpu_busy_s() - b0) / (time.monotonic() - t0)


def wait_idle(max_wait, threshold=0.1):
    """Wait (up to max_wait s) until other processes use less than `threshold` cores."""
    t0 = time.monotonic()
    busy = idle_share()
    while busy > threshold and time.monotonic() - t0 < max_wait:
        log(f'waiting for the machine to become idle ({busy:.2f} cores busy)')
        time.sleep(10)
        busy = idle_share()
    return busy


def make_prompts(n, chars, out_dir):
    stdlib = sysconfig.get_paths()['stdlib']
    os.makedirs(out_dir, exist_ok=True)
    prompts = []
    for mod in PROMPT_MODULES[:n]:
        with open(os.path.join(stdlib, mod), encoding='utf-8') as f:
            text = f.read(chars * 2)[:chars]
        cut = text.rfind('\n')
        text = text[:cut] if cut > chars // 2 else text
        text = text.rstrip('\n')  # llama.cpp's -f drops one trailing newline; keep both equal
        path = os.path.join(out_dir, mod.replace('/', '_').replace('.py', '') + '.txt')
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        prompts.append({'module': mod, 'path': path, 'chars': len(text)})
    if len(prompts) < n:
        die(f'only {len(prompts)} prompt modules are defined')
    return prompts


def parse_ibid(r):
    stats = None
    for line in r['stderr'].splitlines():
        line = line.strip()
        if line.startswith('{') and 'tokens_per_s' in line:
            stats = json.loads(line)
    if stats is None:
        die('no --stats JSON line in ibid stderr:\n' + r['stderr'][-2000:])
    text = r['stdout']
    if text.endswith('\n'):
        text = text[:-1]  # ibid ends its output with a newline
    return {'tokens': stats['tokens'], 'prompt_tokens': stats['prompt_tokens'],
            'decode_tps': stats['tokens_per_s'], 'decode_s': stats['decode_s'],
            'prompt_tps': (stats['prompt_tokens'] - 1) / max(stats['prompt_s'], 1e-9),
            'stop': stats.get('stop'), 'steps': stats.get('steps'), 'text': text}


LLAMA_EVAL = re.compile(r'(?<!prompt )eval time =\s*([\d.]+) ms /\s*(\d+) runs')
LLAMA_PEVAL = re.compile(r'prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens')
LLAMA_SAMPLING = re.compile(r'sampling time =\s*([\d.]+) ms')
LLAMA_SAMPLERS = re.compile(r'samplers time =\s*([\d.]+) ms /\s*(\d+) tokens')


def parse_llama(r):
    err = r['stderr']
    m = LLAMA_EVAL.search(err)
    pm = LLAMA_PEVAL.search(err)
    if not m or not pm:
        die('no eval timings in llama-completion stderr:\n' + err[-2000:])
    eval_ms, runs = float(m.group(1)), int(m.group(2))
    sm = LLAMA_SAMPLING.search(err)
    sampling_ms = float(sm.group(1)) if sm else 0.0
    ss = LLAMA_SAMPLERS.search(err)
    n_sample = int(ss.group(2)) if ss else 0
    text = r['stdout']
    eog = False
    for tail in (' [end of text]\n', '[end of text]\n'):
        if text.endswith(tail):
            text, eog = text[:-len(tail)], True
            break
    text = text.rstrip('\n')
    # samplers counted the prompt too ("n_sample" includes accepted prompt tokens); the sampling
    # time is for the generated tokens only (runs + 1 of them), so scale it per eval run.
    samp_per_run = sampling_ms / (runs + 1) if runs else 0.0
    return {'runs': runs, 'eval_ms': eval_ms, 'decode_tps': 1e3 * runs / max(eval_ms, 1e-9),
            'decode_sampling_tps': 1e3 * runs / max(eval_ms + samp_per_run * runs, 1e-9),
            'sampling_ms': sampling_ms, 'n_sample': n_sample,
            'prompt_tokens': int(pm.group(2)),
            'prompt_tps': 1e3 * int(pm.group(2)) / max(float(pm.group(1)), 1e-9),
            'eog': eog, 'text': text}


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--max-tokens', type=int, default=128)
    ap.add_argument('--prompts', type=int, default=5)
    ap.add_argument('--prompt-chars', type=int, default=700, help='prompt length in characters (~200 tokens at 700)')
    ap.add_argument('--rounds', type=int, default=1, help='times to repeat the interleaved prompt loop')
    ap.add_argument('--out', default=os.path.join(ROOT, 'data', 'bench-decode'))
    ap.add_argument('--model', help='GGUF model (default: scripts/model_path.sh)')
    ap.add_argument('--ibid', default=IBID)
    ap.add_argument('--llama-bin', default=LLAMA_BIN)
    ap.add_argument('--bench-reps', type=int, default=3, help='llama-bench -r')
    ap.add_argument('--calibrate-sizes', default=CALIBRATE_SIZES)
    ap.add_argument('--no-calibrate', action='store_true')
    ap.add_argument('--no-llama-bench', action='store_true')
    ap.add_argument('--wait-idle', type=float, default=600,
                    help='wait up to this many seconds for other processes to go quiet before timing')
    ap.add_argument('--retries', type=int, default=2,
                    help='rerun a prompt pair during which other processes used > 0.1 cores')
    args = ap.parse_args()

    out = os.path.abspath(args.out)
    logs = os.path.join(out, 'logs')
    os.makedirs(logs, exist_ok=True)
    model = args.model or model_path()
    if not os.path.isfile(model):
        die(f'model not found: {model}')
    if not os.access(args.ibid, os.X_OK):
        die(f'{args.ibid} not found: build ibid first (cargo build --release)')
    completion = os.path.join(args.llama_bin, 'llama-completion')
    bench = os.path.join(args.llama_bin, 'llama-bench')
    if not (os.access(completion, os.X_OK) and os.access(bench, os.X_OK)):
        log('llama.cpp tools missing: running scripts/build_llama_tools.sh')
        subprocess.run(['bash', os.path.join(ROOT, 'scripts', 'build_llama_tools.sh')], check=True)
    T, N = str(args.threads), str(args.max_tokens)

    prompts = make_prompts(args.prompts, args.prompt_chars, os.path.join(out, 'prompts'))
    busy = wait_idle(args.wait_idle)
    log(f'other CPU load before start: {busy:.2f} cores busy')
    if busy > 0.1:
        log('WARNING: the machine is not idle; timings will be disturbed')

    def ibid_cmd(p):
        return [args.ibid, '--threads', T, 'generate', '--model', model, '--prompt-file', p['path'],
                '--max-tokens', N, '--draft', 'none', '--stats']

    def llama_cmd(p):
        return [completion, '-m', model, '-f', p['path'], '-n', N, '-t', T, '--temp', '0', '--top-k', '1',
                '-no-cnv', '--no-display-prompt', '--no-escape', '--no-warmup',
                '-c', '4096', '-b', '128', '-ub', '128', '-fa', 'on']

    runs = []
    for rnd in range(args.rounds):
        for i, p in enumerate(prompts):
            order = ['ibid', 'llama'] if (i + rnd) % 2 == 0 else ['llama', 'ibid']
            for attempt in range(args.retries + 1):
                rec = {'round': rnd, 'prompt': p['module'], 'order': order, 'attempt': attempt}
                for tool in order:
                    cmd = ibid_cmd(p) if tool == 'ibid' else llama_cmd(p)
                    name = f'r{rnd}-p{i}-{tool}'
                    r = run(cmd, os.path.join(logs, name))
                    parsed = parse_ibid(r) if tool == 'ibid' else parse_llama(r)
                    parsed.update({k: r[k] for k in ('wall_s', 'child_cpu_s', 'foreign_cpu_s', 'foreign_share')})
                    parsed['cmd'] = cmd_str(cmd)
                    rec[tool] = parsed
                    log(f'{name} {p["module"]}: {parsed["decode_tps"]:.2f} tok/s decode '
                        f'(other load {r["foreign_share"]:.2f} cores)')
                disturbed = max(rec['ibid']['foreign_share'], rec['llama']['foreign_share']) > 0.1
                if not disturbed or attempt == args.retries:
                    break
                log('other processes were busy during this pair: waiting, then running it again')
                wait_idle(args.wait_idle)
            a, b = rec['ibid']['text'], rec['llama']['text']
            rec['identical'] = a == b
            rec['common_prefix_chars'] = common_prefix(a, b)
            runs.append(rec)

    bench_runs = []
    if not args.no_llama_bench:
        for extra in ([], ['-fa', '1']):
            cmd = [bench, '-m', model, '-t', T, '-p', '0', '-n', N, '-r', str(args.bench_reps)] + extra
            name = 'llama-bench' + ('-fa1' if extra else '')
            r = run(cmd + ['-o', 'json'], os.path.join(logs, name))
            res = json.loads(r['stdout'])
            for e in res:
                bench_runs.append({'cmd': cmd_str(cmd), 'avg_ts': e['avg_ts'], 'stddev_ts': e['stddev_ts'],
                                   'n_gen': e['n_gen'], 'flash_attn': e.get('flash_attn'),
                                   'n_threads': e.get('n_threads'), 'build': f"{e.get('build_commit')} ({e.get('build_number')})",
                                   'foreign_share': r['foreign_share']})
                log(f'{name}: tg{e["n_gen"]} {e["avg_ts"]:.2f} ± {e["stddev_ts"]:.2f} tok/s')

    calib = None
    if not args.no_calibrate:
        cmd = [args.ibid, '--threads', T, 'calibrate', '--model', model, '--sizes', args.calibrate_sizes]
        r = run(cmd, os.path.join(logs, 'ibid-calibrate'))
        table = '\n'.join(l for l in r['stdout'].splitlines() if l.startswith('|'))
        calib = {'cmd': cmd_str(cmd), 'table': table, 'foreign_share': r['foreign_share']}
        log('calibrate done')
    busy_after = idle_share()

    # ---- summary ----
    med = lambda xs: statistics.median(xs) if xs else float('nan')
    ibid_tps = [r['ibid']['decode_tps'] for r in runs]
    llama_tps = [r['llama']['decode_tps'] for r in runs]
    llama_s_tps = [r['llama']['decode_sampling_tps'] for r in runs]
    m_ibid, m_llama, m_llama_s = med(ibid_tps), med(llama_tps), med(llama_s_tps)
    identical = sum(r['identical'] for r in runs)
    max_foreign = max([max(r['ibid']['foreign_share'], r['llama']['foreign_share']) for r in runs] +
                      [b['foreign_share'] for b in bench_runs] + ([calib['foreign_share']] if calib else []))

    L = []
    L.append(f'# Decode speed: ibid vs llama.cpp\n')
    L.append(f'Model `{os.path.basename(model)}`, {args.threads} threads, {args.max_tokens} new tokens, '
             f'{len(prompts)} prompts x {args.rounds} round(s), greedy. Machine: {os.cpu_count()} CPUs '
             f'({cpu_model("unknown CPU")}). llama.cpp tools from `scripts/build_llama_tools.sh` '
             f'(same llama.cpp source and CMake settings as ibid\'s llama-cpp-sys-2 build).\n')
    L.append('## Summary (median over prompts)\n')
    L.append(md_table(['tool', 'decode tok/s', 'ibid / this'], [
        ['ibid generate (whole decode loop)', f'{m_ibid:.2f}', '1.00'],
        ['llama-completion, eval only (llama_decode)', f'{m_llama:.2f}', f'{m_ibid / m_llama:.3f}'],
        ['llama-completion, eval + sampling', f'{m_llama_s:.2f}', f'{m_ibid / m_llama_s:.3f}'],
    ] + [[f'llama-bench tg{b["n_gen"]} (fa {FA.get(b["flash_attn"], b["flash_attn"])}, mean of {args.bench_reps} ± sd)',
          f'{b["avg_ts"]:.2f} ± {b["stddev_ts"]:.2f}', f'{m_ibid / b["avg_ts"]:.3f}'] for b in bench_runs],
        ['---', '---:', '---:']))
    L.append(f'\nGreedy output text identical to llama.cpp\'s: **{identical} of {len(runs)}** runs.')
    L.append(f'Other processes\' CPU use during the runs: at most {max_foreign:.2f} cores '
             f'(before: {busy:.2f}, after: {busy_after:.2f}).' +
             (' **The machine was not idle: timings are disturbed.**' if max(max_foreign, busy) > 0.1 else ''))
    L.append('\n## Per prompt\n')
    rows = []
    for r in runs:
        i, l = r['ibid'], r['llama']
        rows.append([r['prompt'], r['round'], ' then '.join(r['order']), f'{i["prompt_tokens"]}/{l["prompt_tokens"]}',
                     f'{i["tokens"]}/{l["runs"]}',
                     f'{i["decode_tps"]:.2f}', f'{l["decode_tps"]:.2f}', f'{l["decode_sampling_tps"]:.2f}',
                     f'{i["decode_tps"] / l["decode_tps"]:.3f}',
                     f'{i["prompt_tps"]:.1f}', f'{l["prompt_tps"]:.1f}',
                     'yes' if r['identical'] else f'no (same first {r["common_prefix_chars"]} chars)',
                     f'{max(i["foreign_share"], l["foreign_share"]):.2f}'])
    L.append(md_table(['prompt', 'round', 'order', 'prompt tokens ibid/llama', 'new tokens ibid / llama eval runs',
                       'ibid tok/s', 'llama eval tok/s', 'llama eval+sampling tok/s', 'ibid/llama',
                       'ibid prompt tok/s', 'llama prompt tok/s', 'same text', 'other load (cores)'],
                      rows, ['---'] + ['---:'] * 10 + ['---', '---:']))
    L.append('\nibid\'s figure is `tokens_per_s` of `--stats`: tokens / wall time of its decode loop (one '
             'single-token `llama_decode` per token, plus argmax and streaming). llama.cpp\'s is from its '
             'perf print, `eval time = X ms / R runs`: R single-token `llama_decode` calls (the first token comes '
             'from the prompt batch, so R = new tokens - 1), sampling excluded; "eval+sampling" adds its '
             '`sampling time` per token. ibid\'s prompt tok/s counts prompt tokens - 1 (it decodes the last '
             'prompt token in the decode loop); llama.cpp\'s counts them all.')
    if calib:
        L.append(f'\n## ibid calibrate ({args.threads} threads)\n')
        L.append(calib['table'])
    L.append('\n## Commands\n')
    L.append('```')
    for r in runs[:2]:
        for tool in r['order']:
            L.append(r[tool]['cmd'])
    if len(runs) > 2:
        L.append(f'# ... and the same for the other prompts in {repo_relative(os.path.join(out, "prompts"))}/')
    for b in bench_runs:
        L.append(b['cmd'] + '   # run with -o json for parsing')
    if calib:
        L.append(calib['cmd'])
    L.append('```')
    L.append(f'\nPrompts: the first ~{args.prompt_chars} characters (cut at a line end) of '
             + ', '.join(f'`{p["module"]}`' for p in prompts)
             + f' from Python {sys.version.split()[0]}\'s stdlib. Logs: `{repo_relative(logs)}/`.')
    if bench_runs:
        L.append(f'llama-bench build: {bench_runs[0]["build"]}.')
    md = '\n'.join(L) + '\n'
    write_results(out, md, {'threads': args.threads, 'max_tokens': args.max_tokens, 'model': model, 'prompts': prompts,
                            'runs': runs, 'llama_bench': bench_runs, 'calibrate': calib,
                            'median': {'ibid': m_ibid, 'llama_eval': m_llama, 'llama_eval_sampling': m_llama_s},
                            'identical': identical, 'idle_before': busy, 'idle_after': busy_after})


if __name__ == '__main__':
    main()
