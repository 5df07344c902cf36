#!/usr/bin/env python3
"""Build one index as N independent parts, then merge them: part i is
`ibid build CORPUS... --shard i/N`, run as a Ray task (one task per part, resources declared,
retried on failure) or as a local process (up to --jobs at once); `ibid merge` then writes one
manifest over all the parts' shards. The parts are deterministic: the same inputs and options give
the same bytes wherever a part is built, so a failed part is simply built again.

  scripts/shard_build.py --parts 4 -o index/big -- corpus/ --tokenizer gguf:model.gguf
  scripts/shard_build.py --backend ray --address auto --parts 64 --cpus-per-part 8 \\
      --memory-per-part 48G -o /shared/index/pile -- /shared/pile/ --split files

On a cluster, the ibid binary (--ibid), the inputs and the output must be at the same paths on
every node (a shared file system), and --memory-per-part should be given: it is both the Ray
memory the task reserves and the build's --memory, so shard sizes do not depend on the node.
Without --address, Ray starts a cluster of this machine alone for this run.
Prints the parts' table on stderr and the merge report (JSON) on stdout."""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import IBID, die, logger, md_table  # noqa: E402

log = logger('shard_build')

SIZE_UNITS = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}


def parse_size(text):
    text = text.strip().upper().rstrip('B')
    unit = text[-1:] if text[-1:] in SIZE_UNITS and text[-1:] != '' else ''
    number = text[:-1] if unit else text
    try:
        return int(float(number) * SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f'not a size: {text!r} (e.g. 512M, 8G)')


def build_part(ibid, build_args, index, count, out, cwd, threads, memory, fail_once):
    """Build part `index` of `count` into `out`; returns what the part reports. Runs in a Ray
    worker or a local thread. The attempt count is kept beside the part (the parts folder is
    shared by all workers), so a retried part says so."""
    attempts_file = out + '.attempts'
    attempt = 1
    if os.path.exists(attempts_file):
        with open(attempts_file) as f:
            attempt = int(f.read() or 0) + 1
    with open(attempts_file, 'w') as f:
        f.write(str(attempt))
    if fail_once == index and attempt == 1:
        raise RuntimeError(f'part {index}/{count}: failing its first attempt, as --fail-once asked')
    command = [ibid, 'build', *build_args, '--shard', f'{index}/{count}', '-o', out, '--force', '--quiet']
    if threads:
        command += ['--threads', str(threads)]
    if memory and '--memory' not in build_args:
        command += ['--memory', str(memory)]
    started = time.time()
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f'part {index}/{count} failed (exit {run.returncode}): {run.stderr.strip()[-2000:]}')
    report = json.loads(run.stdout)
    return {'part': index, 'attempts': attempt, 'host': socket.gethostname(), 'seconds': round(time.time() - started, 2),
            'documents': report['documents'], 'tokens': report['tokens'], 'shards': report['shards'],
            'tokens_per_s': round(report['tokens_per_s'])}


def run_local(args, calls):
    """Each part a local process, up to --jobs at once, each retried up to --retries times."""
    def with_retries(call):
        for attempt in range(args.retries + 1):
            try:
                return build_part(*call)
            except RuntimeError as e:
                if attempt == args.retries:
                    raise
                log(f'{e}; retrying')
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return list(pool.map(with_retries, calls))


def run_ray(args, calls):
    """One Ray task per part: `num_cpus` and `memory` declared, so Ray places no more parts on a
    node than it has room for; a failed task (an error, or its worker lost) is retried."""
    try:
        import ray
    except ImportError:
        die('the ray backend needs Ray: pip install ray (or use --backend local)')
    # Ray's own messages (a task retried, a worker lost) go to stdout: send them to stderr while
    # Ray runs, so stdout carries only the report.
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        return run_ray_tasks(ray, args, calls)
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)


def run_ray_tasks(ray, args, calls):
    if args.address:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    else:
        # A cluster of this machine alone, for this run. (Ray 2.60 gives it the machine's own
        # address, not 127.0.0.1, whatever is asked: its servers listen there.)
        ray.init(include_dashboard=False, log_to_driver=False, num_cpus=args.local_cpus or os.cpu_count())
    try:
        options = {'num_cpus': args.cpus_per_part, 'max_retries': args.retries, 'retry_exceptions': True}
        if args.memory_per_part:
            options['memory'] = args.memory_per_part
        task = ray.remote(build_part).options(**options)
        return ray.get([task.remote(*call) for call in calls])
    finally:
        ray.shutdown()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--parts', type=int, required=True, help='N: how many parts (independent builds)')
    p.add_argument('-o', '--output', required=True, help='the merged index')
    p.add_argument('--backend', choices=['local', 'ray'], default='local')
    p.add_argument('--address', help="a running Ray cluster ('auto' on one of its nodes); default: a local one for this run")
    p.add_argument('--local-cpus', type=int, help='CPUs of the local Ray cluster (default: all)')
    p.add_argument('--cpus-per-part', type=int, default=1, help='CPUs a part reserves, and its build threads')
    p.add_argument('--memory-per-part', type=parse_size, help='memory a part reserves (Ray) and plans its shards for (--memory)')
    p.add_argument('--jobs', type=int, default=1, help='local backend: parts built at once')
    p.add_argument('--retries', type=int, default=2, help='times a failed part is built again')
    p.add_argument('--parts-dir', help='where the parts go (default: OUTPUT.parts); kept with --keep-parts')
    p.add_argument('--keep-parts', action='store_true', help='keep the parts after the merge (the merged files are hard links to them)')
    p.add_argument('--force', action='store_true', help='replace an index at OUTPUT')
    p.add_argument('--ibid', default=IBID, help='the ibid binary (default: this checkout\'s release build)')
    p.add_argument('--fail-once', type=int, metavar='I', help='make part I fail its first attempt (to see retries work)')
    p.add_argument('build_args', nargs=argparse.REMAINDER, help='after --: the corpus and `ibid build` options')
    args = p.parse_args()
    build_args = args.build_args[1:] if args.build_args[:1] == ['--'] else args.build_args
    if args.parts < 1:
        die('--parts must be at least 1')
    if not build_args:
        die('give the corpus (and build options) after --')
    if any(a in ('--shard', '-o', '--output') or a.startswith(('--shard=', '--output=')) for a in build_args):
        die('--shard and --output are this script\'s to set')
    ibid = os.path.abspath(args.ibid)
    if not os.access(ibid, os.X_OK):
        die(f'{ibid} is not there: cargo build --release (or pass --ibid)')
    if os.path.exists(args.output) and not args.force:
        die(f'{args.output} already exists (pass --force to replace it)')
    parts_dir = os.path.abspath(args.parts_dir or args.output.rstrip('/') + '.parts')
    os.makedirs(parts_dir, exist_ok=True)
    for name in os.listdir(parts_dir):
        if name.endswith('.attempts'):
            os.remove(os.path.join(parts_dir, name))
    outs = [os.path.join(parts_dir, f'part-{i}') for i in range(args.parts)]
    calls = [(ibid, build_args, i, args.parts, outs[i], os.getcwd(), args.cpus_per_part, args.memory_per_part, args.fail_once)
             for i in range(args.parts)]

    started = time.time()
    log(f'{args.parts} parts on {args.backend}')
    try:
        reports = run_ray(args, calls) if args.backend == 'ray' else run_local(args, calls)
    except RuntimeError as e:
        die(str(e))
    except Exception as e:  # Ray wraps a task's error in its own exception types
        die(f'{type(e).__name__}: {e}')
    build_s = time.time() - started
    print(md_table(['part', 'attempts', 'host', 'seconds', 'documents', 'tokens', 'shards', 'tokens/s'],
                   [[r['part'], r['attempts'], r['host'], r['seconds'], r['documents'], r['tokens'], r['shards'], r['tokens_per_s']]
                    for r in reports]), file=sys.stderr)

    merge = [ibid, 'merge', *outs, '-o', args.output, '--quiet'] + (['--force'] if args.force else [])
    run = subprocess.run(merge, capture_output=True, text=True)
    if run.returncode != 0:
        die(f'merge failed: {run.stderr.strip()}')
    report = json.loads(run.stdout)
    report.update({'backend': args.backend, 'build_s': round(build_s, 2), 'total_s': round(time.time() - started, 2),
                   'parts_dir': parts_dir if args.keep_parts else None, 'part_reports': reports})
    if not args.keep_parts:
        for out in outs:
            subprocess.run(['rm', '-rf', out, out + '.attempts'], check=True)
        if not os.listdir(parts_dir):
            os.rmdir(parts_dir)
    print(json.dumps(report, indent=2))


if __name__ == '__main__':
    main()
