#!/usr/bin/env python3
"""Held-out prompts for the generation benchmark, from sources the drafting was never tuned on.

Usage:
  scripts/heldout_prompts.py [--out data/prompts/heldout.jsonl] [--per-class 10]

The drafting parameters were chosen on scripts/bench_generate.py's built-in set (HumanEval Python,
MT-Bench chat, copy tasks over the CPython standard library and the Python docs). This set is made
from what every machine of this project holds after `cargo build`: the sources of the crates ibid
depends on (the cargo registry) and npm's own package.

Classes (--per-class prompts each):
  code   completion in Rust (half, rounded up: crate sources, src/**/*.rs, no test code) and
         JavaScript (npm's lib/**/*.js): a file from its start or from a function's start to the
         end of a line inside a function body of 10-40 lines, 800-1500 characters;
  prose  plain completion of documentation prose: npm's docs (docs/content/**/*.md), every other
         passage from the crates' READMEs while they last; 700-1400 characters of running prose
         (no front matter, headings, lists, code or tables), cut at a sentence end;
  copy   chat prompts whose answer reuses a long passage of the prompt (quote, rename, comment,
         fix, repeat, in Gemma's turn format as bench_generate.py writes them) over Rust and
         JavaScript functions of 12-40 lines and npm doc passages of 600-1200 characters.

Choice is a fixed rule, no randomness: crates in CRATES order (the highest version in the registry
of each), files in sorted order taken every STRIDE-th (from the first, then from the second, ...),
the first function or passage that fits in each, one prompt per file at most. The output depends
only on which crate versions and which npm the machine holds.

Writes JSONL, one object a line: {"id": "code-00", "class": "code", "text": ..., "source": the
file's path inside its package, "package": the package folder (serde_json-1.0.154, npm-11.19.1)}.
Relative --out paths are taken from the repository root, as bench_generate.py's --out.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_generate import gemma_turn  # noqa: E402
from benchlib import ROOT, die, repo_relative  # noqa: E402

# Crates ibid depends on, directly or through a dependency, so that `cargo build` has fetched them;
# in order of preference: the first that yield prompts serve, the rest stand in for any that don't.
CRATES = ['regex-syntax', 'serde_json', 'clap_builder', 'rayon', 'memchr', 'walkdir', 'zstd', 'indexmap',
          'anyhow', 'flate2', 'aho-corasick', 'regex-automata', 'rayon-core', 'hashbrown', 'tokio']
STRIDE = 7
# Generated tables and the like: nothing to complete, and slow to scan
MAX_FILE_BYTES = 200_000
SKIP_DIRS = {'tests', 'test', 'benches', 'examples', 'testdata', 'fuzz'}


def spread(files):
    """Every STRIDE-th file from the first, then from the second, ...: the first picks span the list."""
    return [f for j in range(STRIDE) for f in files[j::STRIDE]]


def walk(root, sub, suffix):
    """Sorted paths, relative to root, of the files under root/sub ending in suffix, test code left
    out."""
    found = []
    for d, dirs, files in os.walk(os.path.join(root, sub)):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        for f in files:
            if f.endswith(suffix) and not re.search(r'(^|_)tests?\.rs$|_tests?\.rs$', f):
                p = os.path.join(d, f)
                if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) <= MAX_FILE_BYTES:
                    found.append(os.path.relpath(p, root))
    return sorted(found)


def read(path):
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------- sources

def cargo_crates():
    """(folder name, path) of the highest version of each crate of CRATES in the cargo registry,
    in CRATES' order."""
    home = os.environ.get('CARGO_HOME') or os.path.expanduser('~/.cargo')
    src = os.path.join(home, 'registry', 'src')
    best = {}
    for d in sorted(glob.glob(os.path.join(src, '*', '*'))):
        m = re.fullmatch(r'(.+?)-(\d+)\.(\d+)\.(\d+)(.*)', os.path.basename(d))
        if not m or m.group(1) not in CRATES or not os.path.isdir(os.path.join(d, 'src')):
            continue
        # a release ranks above its own pre-releases; build metadata (+...) is not a pre-release
        key = (*map(int, m.group(2, 3, 4)), not m.group(5) or m.group(5).startswith('+'), m.group(5))
        if m.group(1) not in best or key > best[m.group(1)][0]:
            best[m.group(1)] = (key, d)
    if not best:
        die(f'none of the crates {", ".join(CRATES)} under {src}/*/ (the cargo registry): run `cargo build` '
            'first, which fetches them')
    return [(os.path.basename(best[c][1]), best[c][1]) for c in CRATES if c in best]


def npm_package():
    """(folder name with version, path) of npm's own package: `npm root -g`/npm, else
    /usr/lib/node_modules/npm."""
    tried = []
    try:
        p = subprocess.run(['npm', 'root', '-g'], capture_output=True, text=True, timeout=120)
        if p.returncode == 0 and p.stdout.strip():
            tried.append(os.path.join(p.stdout.strip(), 'npm'))
    except (OSError, subprocess.TimeoutExpired):
        pass
    tried.append('/usr/lib/node_modules/npm')
    for d in tried:
        if os.path.isdir(os.path.join(d, 'lib')):
            try:
                version = json.load(open(os.path.join(d, 'package.json')))['version']
            except (OSError, ValueError, KeyError):
                version = 'unknown'
            return f'npm-{version}', d
    die(f'npm\'s sources not found: no lib/ in {" or ".join(tried)} (is npm installed?)')


# ---------------------------------------------------------------- functions

def scrub(text, lang):
    """The text with comments and string and character literals blanked (newlines kept), so that
    braces and semicolons left are code."""
    out = list(text)
    n, i = len(text), 0

    def blank(a, b):
        for k in range(a, min(b, n)):
            if out[k] != '\n':
                out[k] = ' '

    while i < n:
        c, nxt = text[i], text[i + 1] if i + 1 < n else ''
        if c == '/' and nxt == '/':
            j = text.find('\n', i)
            j = n if j < 0 else j
        elif c == '/' and nxt == '*':
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith('*/', j):
                    depth, j = depth - 1, j + 2
                elif lang == 'rust' and text.startswith('/*', j):  # Rust block comments nest
                    depth, j = depth + 1, j + 2
                else:
                    j += 1
        elif lang == 'rust' and c == 'r' and (m := RAW.match(text, i)) and \
                not IDENT_END.search(text, 0, i - (text[i - 1:i] == 'b')):
            hashes = m.group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
        elif c == '"' or (lang == 'javascript' and c == "'"):
            j = i + 1
            while j < n and text[j] != c and (lang == 'rust' or text[j] != '\n'):
                j += 2 if text[j] == '\\' else 1
            j += 1
        elif lang == 'rust' and c == "'":
            # a character literal ('x', '\n', '\u{..}'), else a lifetime or a label
            if nxt == '\\':
                end = text.find("'", i + 3)
                j = n if end < 0 else end + 1
            elif i + 2 < n and text[i + 2] == "'":
                j = i + 3
            else:
                i += 1
                continue
        elif lang == 'javascript' and c == '`':
            # a template literal, with ${...} expressions that may hold templates of their own
            j, stack = i + 1, ['`']
            while j < n and stack:
                t = text[j]
                if stack[-1] == '`':
                    if t == '\\':
                        j += 1
                    elif t == '`':
                        stack.pop()
                    elif text.startswith('${', j):
                        stack.append('{')
                        j += 1
                else:
                    if t == '`':
                        stack.append('`')
                    elif t == '{':
                        stack.append('{')
                    elif t == '}':
                        stack.pop()
                    elif t in '\'"':
                        end = text.find(t, j + 1)
                        j = n if end < 0 else end
                j += 1
        else:
            i += 1
            continue
        blank(i, j)
        i = max(j, i + 1)
    return ''.join(out)


RAW = re.compile(r'r(#*)"')
IDENT_END = re.compile(r'\w$')
RUST_FN = [re.compile(r'^(?P<indent>[ \t]*)(pub(\([^)]*\))?\s+)?((const|async|unsafe|default)\s+)*'
                      r'(extern\s+"[^"]*"\s+)?fn\s+(?P<name>\w+)')]
JS_FN = [
    re.compile(r'^(?P<indent>[ \t]*)(export\s+)?(default\s+)?(async\s+)?function\s*\*?\s*(?P<name>\w+)\s*\('),
    re.compile(r'^(?P<indent>[ \t]*)(static\s+)?(async\s+)?(get\s+|set\s+)?\*?(?P<name>#?\w+)\s*\([^;()]*\)\s*\{\s*$'),
    re.compile(r'^(?P<indent>[ \t]*)(export\s+)?(const|let|var)\s+(?P<name>\w+)\s*=\s*(async\s+)?'
               r'(\([^;()]*\)|\w+)\s*=>\s*\{\s*$'),
]
NOT_NAMES = {'if', 'for', 'while', 'switch', 'catch', 'function', 'return', 'with', 'super', 'await', 'typeof'}


def split_lines(text):
    """Lines with their '\\n', split on '\\n' alone: str.splitlines also splits on form feeds
    and the like, which scrub() blanks inside strings."""
    parts = text.split('\n')
    return [x + '\n' for x in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def functions(text, lang):
    """Functions with a body in a source file: dicts of doc (first line of the comments and
    attributes above it), start (its first line), open (the line of its opening brace), close (of
    its closing brace, indented as its first line) and name; 0-based line numbers."""
    lines, clean = split_lines(text), split_lines(scrub(text, lang))
    if lang == 'rust':
        # test modules sit at the end of a file by convention: stop there
        for k, line in enumerate(clean):
            if re.match(r'\s*#\[cfg\(test\)\]', line):
                lines, clean = lines[:k], clean[:k]
                break
    found = []
    for i, line in enumerate(clean):
        m = next((m for r in (RUST_FN if lang == 'rust' else JS_FN) if (m := r.match(line))), None)
        if not m or m.group('name') in NOT_NAMES:
            continue
        # the opening brace: within a few lines, outside the parameters, with no ';' first (a
        # declaration without a body)
        j, col, opened, nest = i, m.end('name'), False, 0
        while not opened and j < min(len(clean), i + 8):
            for x, ch in enumerate(clean[j][col:], col):
                if ch in '([':
                    nest += 1
                elif ch in ')]':
                    nest -= 1
                elif ch == ';' and nest <= 0:
                    break
                elif ch == '{' and nest <= 0:
                    opened, col = True, x
                    break
            else:
                j, col = j + 1, 0
                continue
            break
        if not opened:
            continue
        depth, k, close = 0, j, None
        while k < len(clean) and close is None:
            for ch in clean[k][col if k == j else 0:]:
                if ch == '{':
                    depth += 1
                elif ch == '}':
                    depth -= 1
                    if depth == 0:
                        close = k
                        break
            k += 1
        # a close indented as the function's first line: the matching went right
        if close is None or not lines[close].lstrip().startswith('}') or \
                lines[close][:len(lines[close]) - len(lines[close].lstrip())] != m.group('indent'):
            continue
        doc = i
        while doc > 0 and lines[doc - 1].strip().startswith(('///', '#[', '//', '/*', '*')):
            doc -= 1
        if lang == 'rust' and any(re.match(r'\s*#\[(\w+::)?test\b', lines[d]) for d in range(doc, i)):
            continue
        found.append({'doc': doc, 'start': i, 'open': j, 'close': close, 'name': m.group('name')})
    return lines, found


def completion_text(text, lang, lo=800, hi=1500):
    """The file from its start or a function's start to the end of a line inside the body of its first
    function of 10-40 lines where that makes lo..hi characters; None when none does."""
    lines, fns = functions(text, lang)
    offset = [0]
    for line in lines:
        offset.append(offset[-1] + len(line))
    starts = sorted({0} | {f['doc'] for f in fns}, reverse=True)
    for f in fns:
        if not 10 <= f['close'] - f['start'] + 1 <= 40:
            continue
        mid = (f['open'] + f['close']) / 2
        # at least one line of the body given and one left, the middle first; not after a blank
        # line, a comment or an attribute, which say little of what comes next
        cuts = sorted((c for c in range(f['open'] + 1, f['close'] - 1)
                       if lines[c].strip() and not lines[c].lstrip().startswith(('//', '/*', '*', '#['))),
                      key=lambda c: (abs(c - mid), c))
        for s in (s for s in starts if s <= f['doc']):
            for c in cuts:
                if lo <= offset[c + 1] - offset[s] <= hi:
                    return ''.join(lines[s:c + 1])
    return None


def whole_function(text, lang):
    """The first function of 12-40 lines with the comments and attributes above it, dedented, and its
    name; None when there is none."""
    lines, fns = functions(text, lang)
    for f in fns:
        if 12 <= f['close'] - f['start'] + 1 <= 40:
            return textwrap.dedent(''.join(lines[f['doc']:f['close'] + 1])).rstrip('\n'), f['name']
    return None


# ---------------------------------------------------------------- prose

SENTENCE_END = re.compile(r'[.!?]["\')\]*_]*(?=\s|$)')
NOT_ENDS = ('e.g.', 'i.e.', 'etc.', 'vs.', 'cf.', 'Mr.', 'Dr.', 'No.')


def prose_runs(md):
    """Runs of consecutive prose paragraphs of a markdown file, joined by blank lines: front matter,
    headings, lists, quotes, code, tables, HTML, rules and link definitions end a run."""
    if md.startswith('---\n'):
        end = md.find('\n---\n', 4)
        md = md[end + 5:] if end >= 0 else md
    blocks, cur, fence = [], [], None
    for line in md.splitlines() + ['']:
        s = line.strip()
        if fence:
            if s.startswith(fence):
                fence = None
            continue
        if s.startswith(('```', '~~~')):
            fence = s[:3]
            blocks.append(cur)
            blocks.append(None)  # code: ends a run
            cur = []
        elif not s:
            blocks.append(cur)
            cur = []
        else:
            cur.append(line)
    runs, run = [], []
    for b in blocks:
        if b == []:
            continue
        if b is not None and is_prose(b):
            run.append('\n'.join(x.rstrip() for x in b))
        else:
            if run:
                runs.append('\n\n'.join(run))
            run = []
    if run:
        runs.append('\n\n'.join(run))
    return runs


LIST_ITEM = re.compile(r'\s*([-*+]|\d+[.)])\s')
NOT_PROSE = re.compile(r'\s*(#|\||<|>|=|\{|\$|!\[|\[!\[|\[[^\]]*\]:\s|---|\*\*\*|___)')


def is_prose(block):
    """A paragraph of sentences: not a heading, list, quote, table, HTML, rule, image, link
    definition or indented code, and ending as a sentence does."""
    if block[0].startswith(('    ', '\t')) or NOT_PROSE.match(block[0]) or \
            any(LIST_ITEM.match(x) or x.strip().startswith('|') for x in block):
        return False
    text = ' '.join(x.strip() for x in block)
    return re.search(r'[.!?:]["\')\]`*_]*$', text) is not None and text.count(' ') >= 3


def passage(md, lo, hi):
    """The first lo..hi characters of running prose in a markdown file, from a run's start to a
    sentence end outside inline code; None when no run is that long."""
    for run in prose_runs(md):
        best = None
        for m in SENTENCE_END.finditer(run, 0, hi):
            e = m.end()
            if e < lo or run[:e].count('`') % 2 or run[:m.start() + 1].endswith(NOT_ENDS):
                continue
            best = e
        if best:
            return run[:best]
    return None


# ---------------------------------------------------------------- prompts

def picks(package, root, files, make, used):
    """(package, path, made) for each file of `files` (relative to root) that make() turns into
    something, files used before left out."""
    for rel in files:
        key = (package, rel)
        if key in used:
            continue
        text = read(os.path.join(root, rel))
        made = make(text) if text is not None else None
        if made is not None:
            used.add(key)
            yield package, rel, made


def round_robin(gens):
    """One from each generator in turn, dropping those that run out."""
    gens = list(gens)
    while gens:
        for g in list(gens):
            try:
                yield next(g)
            except StopIteration:
                gens.remove(g)


def take(gen, n, what):
    got = []
    for x in gen:
        if len(got) == n:
            break
        got.append(x)
    if len(got) < n:
        die(f'only {len(got)} of {n} {what} could be made from the sources found')
    return got


def code_prompts(n, crates, npm, used):
    rust = round_robin(picks(pkg, d, spread(walk(d, 'src', '.rs')), lambda t: completion_text(t, 'rust'), used)
                       for pkg, d in crates)
    got = [('rust', *x) for x in take(rust, (n + 1) // 2, 'Rust completion prompts')]
    js = picks(npm[0], npm[1], spread(walk(npm[1], 'lib', '.js')), lambda t: completion_text(t, 'javascript'), used)
    got += [('javascript', *x) for x in take(js, n // 2, 'JavaScript completion prompts')]
    return [{'text': text, 'package': pkg, 'source': rel} for _, pkg, rel, text in got]


def docs_files(npm):
    if not os.path.isdir(os.path.join(npm[1], 'docs', 'content')):
        die(f'npm\'s documentation not found: no {os.path.join(npm[1], "docs", "content")}')
    return walk(npm[1], os.path.join('docs', 'content'), '.md')


def prose_prompts(n, crates, npm, used):
    docs = picks(npm[0], npm[1], spread(docs_files(npm)), lambda t: passage(t, 700, 1400), used)
    readmes = round_robin(picks(pkg, d, ['README.md'], lambda t: passage(t, 700, 1400), used)
                          for pkg, d in crates if os.path.isfile(os.path.join(d, 'README.md')))
    got = []
    for i in range(n):
        x = next(readmes, None) if i % 2 else None
        x = x or next(docs, None)
        if x is None:
            die(f'only {len(got)} of {n} prose passages could be made from npm\'s docs and the crates\' READMEs')
        got.append(x)
    return [{'text': text, 'package': pkg, 'source': rel} for pkg, rel, text in got]


COPY_TASKS = [
    'Quote this function exactly as it is.',
    'Rename the function to `{name}_v2` and change nothing else. Reply with the full code.',
    'Add comments to this function that explain what it does. Reply with the complete function.',
    'Fix any bug you find in this function and reply with the complete corrected function.',
]
PROSE_TASKS = [
    ('Repeat the following passage word for word, then add one sentence that summarizes it.', ''),
    ('Quote this passage exactly, inside quotation marks.', '"'),
]


def copy_prompts(n, crates, npm, used):
    # other files than the code class's: the sorted lists taken from their end
    rust = round_robin(picks(pkg, d, spread(walk(d, 'src', '.rs')[::-1]), lambda t: whole_function(t, 'rust'), used)
                       for pkg, d in crates)
    js = picks(npm[0], npm[1], spread(walk(npm[1], 'lib', '.js')[::-1]), lambda t: whole_function(t, 'javascript'),
               used)
    docs = picks(npm[0], npm[1], spread(docs_files(npm)[::-1]), lambda t: passage(t, 600, 1200), used)
    out, ncode = [], 0
    for i in range(n):
        if i % 3 == 2:
            x = next(docs, None)
            if x is None:
                die(f'too few npm doc passages for {n} copy prompts')
            pkg, rel, text = x
            task, prefill = PROSE_TASKS[(i // 3) % len(PROSE_TASKS)]
            out.append({'text': gemma_turn(f'{task}\n\n{text}', prefill), 'package': pkg, 'source': rel})
            continue
        lang = 'rust' if ncode % 2 == 0 else 'javascript'
        x = next(rust if lang == 'rust' else js, None)
        if x is None:
            die(f'too few {lang} functions of 12-40 lines for {n} copy prompts')
        pkg, rel, (code, name) = x
        task = COPY_TASKS[ncode % len(COPY_TASKS)].format(name=name.lstrip('#'))
        out.append({'text': gemma_turn(f'{task}\n\n```{lang}\n{code}\n```', f'```{lang}\n'),
                    'package': pkg, 'source': rel})
        ncode += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default='data/prompts/heldout.jsonl')
    ap.add_argument('--per-class', type=int, default=10)
    args = ap.parse_args()
    if args.per_class < 1:
        die('--per-class must be at least 1')
    crates, npm = cargo_crates(), npm_package()
    used = set()
    rows = []
    for cls, make in (('code', code_prompts), ('prose', prose_prompts), ('copy', copy_prompts)):
        for i, p in enumerate(make(args.per_class, crates, npm, used)):
            rows.append({'id': f'{cls}-{i:02d}', 'class': cls, 'text': p['text'], 'source': p['source'],
                         'package': p['package']})
    out = os.path.join(ROOT, args.out)
    os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
    with open(out + '.tmp', 'w', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + '\n')
    os.replace(out + '.tmp', out)
    count = {}
    for r in rows:
        kind = r['class'] + (' rust' if r['source'].endswith('.rs') else ' javascript' if r['source'].endswith('.js')
                             else ' npm-docs' if r['package'].startswith('npm-') else ' readme')
        count[kind] = count.get(kind, 0) + 1
    print(f'heldout_prompts.py: {len(rows)} prompts ({", ".join(f"{k} {v}" for k, v in count.items())}) '
          f'-> {repo_relative(out)}', file=sys.stderr)


if __name__ == '__main__':
    main()
