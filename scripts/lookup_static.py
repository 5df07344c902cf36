#!/usr/bin/env python3
"""Write llama.cpp's static lookup cache (what `llama-lookup-create` makes) from an ibid index.

Usage: scripts/lookup_static.py INDEX_DIR OUT.bin

`llama-lookup-create` tokenizes its whole input as one string, which takes time quadratic in the
input with the Gemma 3 tokenizer (1 MB: 16 s, 2 MB: 63 s on a 2-core machine; a 25 MB corpus would
take hours). The cache itself is simple: for every 2-token context (LLAMA_NGRAM_STATIC), the
counts of the tokens that followed it. This script counts them from the index's token files (the
same model tokenizer; documents are not joined) and writes common_ngram_cache_save's format:
per context, 4 int32 tokens (unused ones -1), an int32 number of entries, then (token, count)
int32 pairs. `--check TEXT_FILE` compares against llama-lookup-create on a small text instead.
"""

import json
import os
import sys

import numpy as np

NGRAM_MAX = 4


def index_tokens(index_dir):
    manifest = json.load(open(os.path.join(index_dir, 'ibid.json')))
    width = manifest['token_width']
    dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32}[width]
    sep = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}[width]
    for shard in manifest['shards']:
        yield np.fromfile(os.path.join(index_dir, f'tokenized.{shard["id"]}'), dtype=dtype).astype(np.int64), sep


def count_triples(streams):
    keys = []
    for toks, sep in streams:
        a, b, c = toks[:-2], toks[1:-1], toks[2:]
        ok = (a != sep) & (b != sep) & (c != sep)
        keys.append((a[ok] << 40) | (b[ok] << 20) | c[ok])
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.unique(np.concatenate(keys), return_counts=True)


def write_cache(uniq, counts, out):
    ctx = uniq >> 20
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
    ends = np.r_[starts[1:], len(ctx)]
    mask = (1 << 20) - 1
    with open(out + '.tmp', 'wb') as f:
        for s, e in zip(starts, ends):
            a, b = int(ctx[s] >> 20), int(ctx[s] & mask)
            head = np.array([a, b, -1, -1, e - s], dtype=np.int32)
            pairs = np.empty((e - s, 2), dtype=np.int32)
            pairs[:, 0] = uniq[s:e] & mask
            pairs[:, 1] = counts[s:e]
            f.write(head.tobytes())
            f.write(pairs.tobytes())
    os.replace(out + '.tmp', out)
    return len(starts)


def read_cache(path):
    data = np.fromfile(path, dtype=np.int32)
    out, i = {}, 0
    while i < len(data):
        ngram, n = tuple(int(x) for x in data[i:i + NGRAM_MAX]), int(data[i + NGRAM_MAX])
        pairs = data[i + NGRAM_MAX + 1:i + NGRAM_MAX + 1 + 2 * n].reshape(-1, 2)
        out[ngram] = {int(t): int(c) for t, c in pairs}
        i += NGRAM_MAX + 1 + 2 * n
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    index_dir, out = sys.argv[1:]
    uniq, counts = count_triples(index_tokens(index_dir))
    contexts = write_cache(uniq, counts, out)
    print(f'{out}: {contexts} contexts, {len(uniq)} (context, next) pairs, {int(counts.sum())} positions',
          file=sys.stderr)


if __name__ == '__main__':
    main()
