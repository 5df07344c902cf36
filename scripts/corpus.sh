#!/usr/bin/env bash
# Assemble a ~100 MB benchmark corpus of real text nobody in this project wrote:
#
#   linux-doc.jsonl   Debian linux-doc-6.1: the kernel's reStructuredText sources
#                     (Documentation/**/*.rst, stored .rst.gz), one document per file
#   python-doc.jsonl  Debian python3.11-doc: the reST sources of the Python docs
#                     (html/_sources/**/*.rst.txt), one document per file
#   gcide.jsonl       Debian dict-gcide: the dictd data (gcide.dict.dz, dictzip =
#                     gzip), cut into ~64 KiB documents at entry boundaries
#   cpython.jsonl     the local python3's standard library *.py (site-packages
#                     skipped, tests kept), one document per file
#
# Every line is {"text": ..., "source": PACKAGE, "path": ...}; files are taken
# in sorted path order and the sources in the order above, until the text
# reaches CORPUS_MAX_BYTES (default 100000000 UTF-8 bytes): the last source is
# cut at a document boundary.  Files/entries that are not valid UTF-8 are
# skipped and counted.
#
# Usage: scripts/corpus.sh [OUT_DIR]            (default data/corpus)
#   Idempotent: does nothing when OUT_DIR/.complete exists.
#   Packages: files already installed on the system are used; otherwise the
#   .deb is fetched with `apt-get download` (after `apt-get update` if apt does
#   not know the package) and unpacked with `dpkg -x` into data/corpus-debs/
#   (no system change; also works where dpkg path-excludes drop /usr/share/doc).
#   CORPUS_FORCE_DOWNLOAD=1 always uses the download path.
set -euo pipefail

OUT_DIR=${1:-data/corpus}
MAX_BYTES=${CORPUS_MAX_BYTES:-100000000}
SCRATCH=${CORPUS_SCRATCH:-data/corpus-debs}

if [[ -e "$OUT_DIR/.complete" ]]; then
    echo "corpus.sh: $OUT_DIR/.complete exists, nothing to do" >&2
    cat "$OUT_DIR/.complete" >&2
    exit 0
fi

need_cmd() { command -v "$1" >/dev/null 2>&1; }
for c in python3 apt-get dpkg; do
    need_cmd "$c" || { echo "corpus.sh: $c is required" >&2; exit 1; }
done

APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED == 0 ]]; then
        echo "corpus.sh: apt-get update" >&2
        apt-get update -qq >&2
        APT_UPDATED=1
    fi
}

# pkg_root PACKAGE SENTINEL -> prints the root ("/" or the unpack dir) under
# which SENTINEL (an absolute path) exists.
pkg_root() {
    local pkg=$1 sentinel=$2
    if [[ "${CORPUS_FORCE_DOWNLOAD:-0}" != 1 && -e "$sentinel" ]]; then
        echo /
        return
    fi
    local root="$SCRATCH/root-$pkg"
    if [[ -e "$root/.unpacked" && -e "$root$sentinel" ]]; then
        echo "$root"
        return
    fi
    mkdir -p "$SCRATCH/debs"
    if ! apt-cache show "$pkg" >/dev/null 2>&1 || [[ -z "$(apt-cache show "$pkg" 2>/dev/null)" ]]; then
        apt_update_once
    fi
    rm -f "$SCRATCH/debs/${pkg}"_*.deb
    echo "corpus.sh: apt-get download $pkg" >&2
    if ! (cd "$SCRATCH/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
        # stale lists: refresh once and retry
        apt_update_once
        (cd "$SCRATCH/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
    fi
    local deb
    deb=$(ls "$SCRATCH/debs/${pkg}"_*.deb | head -n1)
    rm -rf "$root"
    mkdir -p "$root"
    echo "corpus.sh: dpkg -x $deb" >&2
    dpkg -x "$deb" "$root"
    [[ -e "$root$sentinel" ]] || { echo "corpus.sh: $pkg has no $sentinel" >&2; exit 1; }
    touch "$root/.unpacked"
    echo "$root"
}

LINUX_ROOT=$(pkg_root linux-doc-6.1 /usr/share/doc/linux-doc-6.1/Documentation)
PYDOC_ROOT=$(pkg_root python3.11-doc /usr/share/doc/python3.11/html/_sources)
GCIDE_ROOT=$(pkg_root dict-gcide /usr/share/dictd/gcide.dict.dz)
STDLIB=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')

mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.jsonl "$OUT_DIR"/*.jsonl.tmp

python3 - "$OUT_DIR" "$MAX_BYTES" "$LINUX_ROOT" "$PYDOC_ROOT" "$GCIDE_ROOT" "$STDLIB" <<'PY'
import gzip, json, os, re, sys

out_dir, max_bytes, linux_root, pydoc_root, gcide_root, stdlib = sys.argv[1:]
max_bytes = int(max_bytes)
J = os.path.join


def walk(root, keep, prune=lambda d: False):
    """Sorted relative paths (by full relative path) of files under root."""
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if not prune(J(d, x))]
        for f in files:
            p = J(d, f)
            if keep(p) and os.path.isfile(p) and not os.path.islink(p):
                found.append(os.path.relpath(p, root))
    return sorted(found)


def read(p):
    if p.endswith('.gz') or p.endswith('.dz'):  # dictzip is gzip-compatible
        with gzip.open(p, 'rb') as f:
            return f.read()
    with open(p, 'rb') as f:
        return f.read()


def files_docs(root, rels, strip_gz):
    for rel in rels:
        path = rel[:-3] if strip_gz and rel.endswith('.gz') else rel
        yield path, read(J(root, rel))


def gcide_docs(path, chunk=64 * 1024):
    """Entries start at a non-blank line after a blank line; group whole
    entries into documents of about `chunk` bytes.  Invalid UTF-8 entries are
    reported as documents of their own (the caller skips and counts them)."""
    data = read(path)
    entries = re.split(rb'\n\n(?=\S)', data)
    buf, size, n = [], 0, 0
    for e in entries:
        try:
            e.decode('utf-8')
        except UnicodeDecodeError:
            yield f'gcide.dict#bad-entry-{e[:40].split(b" ")[0].decode("latin-1")}', e
            continue
        buf.append(e)
        size += len(e) + 2
        if size >= chunk:
            yield f'gcide.dict#{n:05d}', b'\n\n'.join(buf) + b'\n'
            n += 1
            buf, size = [], 0
    if buf:
        yield f'gcide.dict#{n:05d}', b'\n\n'.join(buf) + b'\n'


linux_doc = J(linux_root, 'usr/share/doc/linux-doc-6.1')
pydoc = J(pydoc_root, 'usr/share/doc/python3.11/html/_sources')
gcide = J(gcide_root, 'usr/share/dictd/gcide.dict.dz')

sources = [
    ('linux-doc', 'linux-doc-6.1', lambda: files_docs(
        linux_doc,
        walk(linux_doc, lambda p: p.endswith('.rst') or p.endswith('.rst.gz'),
             prune=lambda d: os.path.basename(d) == 'html' and os.path.dirname(d) == linux_doc),
        True)),
    ('python-doc', 'python3.11-doc', lambda: files_docs(
        pydoc, walk(pydoc, lambda p: p.endswith('.txt') or p.endswith('.txt.gz')), True)),
    ('gcide', 'dict-gcide', lambda: gcide_docs(gcide)),
    ('cpython', 'cpython-stdlib', lambda: files_docs(
        stdlib,
        walk(stdlib, lambda p: p.endswith('.py'),
             prune=lambda d: os.path.basename(d) in ('site-packages', '__pycache__')),
        False)),
]

total = 0
report = []
full = False
for name, pkg, gen in sources:
    docs = bad = empty = text_bytes = 0
    cut = 0
    tmp = J(out_dir, name + '.jsonl.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        for path, raw in gen():
            if full:
                cut += 1
                continue
            try:
                text = raw.decode('utf-8')
            except UnicodeDecodeError:
                bad += 1
                continue
            if not text.strip():
                empty += 1
                continue
            if total + len(raw) > max_bytes:
                full = True
                cut += 1
                continue
            f.write(json.dumps({'text': text, 'source': pkg, 'path': path}, ensure_ascii=False) + '\n')
            docs += 1
            text_bytes += len(raw)
            total += len(raw)
    os.replace(tmp, J(out_dir, name + '.jsonl'))
    fsize = os.path.getsize(J(out_dir, name + '.jsonl'))
    report.append({'file': name + '.jsonl', 'source': pkg, 'documents': docs, 'text_bytes': text_bytes,
                   'file_bytes': fsize, 'skipped_not_utf8': bad, 'skipped_empty': empty,
                   'dropped_over_cap': cut})

summary = {'max_text_bytes': max_bytes, 'text_bytes': total,
           'file_bytes': sum(r['file_bytes'] for r in report),
           'documents': sum(r['documents'] for r in report), 'sources': report}
print(f"{'file':<18} {'docs':>7} {'text MB':>9} {'file MB':>9} {'not-utf8':>9} {'empty':>6} {'over-cap':>9}",
      file=sys.stderr)
for r in report:
    print(f"{r['file']:<18} {r['documents']:>7} {r['text_bytes'] / 1e6:>9.2f} {r['file_bytes'] / 1e6:>9.2f} "
          f"{r['skipped_not_utf8']:>9} {r['skipped_empty']:>6} {r['dropped_over_cap']:>9}", file=sys.stderr)
print(f"{'total':<18} {summary['documents']:>7} {total / 1e6:>9.2f} {summary['file_bytes'] / 1e6:>9.2f}",
      file=sys.stderr)
with open(J(out_dir, '.complete'), 'w') as f:
    json.dump(summary, f, indent=1)
    f.write('\n')
PY
echo "corpus.sh: wrote $OUT_DIR" >&2
