#!/usr/bin/env python3
"""Turn an ibid index built with 4-byte tokens into u16 token files.

Usage: scripts/to_u16.py SRC_INDEX OUT_DIR

SRC_INDEX holds tokenized.N (little-endian u32, every document starting with
the separator 0xFFFFFFFF) and offset.N (little-endian u64 byte offsets of the
document starts), e.g. an `ibid build --tokenizer gguf:...` index.

OUT_DIR gets tokenized.N (little-endian u16, separator 0xFFFF) and offset.N
(u64 byte offsets recomputed for 2-byte tokens) -- nothing else, so that any
tool can build its table.N over "the same tokens as u16".

Token ids are remapped by descending frequency over all shards together (ties
broken by the smaller original id) to 0..65533; every id beyond the 65534 most
frequent distinct ones maps to 65534.  The output is deterministic.  The
mapping is written to OUT_DIR/u16-map.json ({"new": old, ...} for the kept
ids plus counts); pass --no-map to skip it.  Standard library only.
"""

import argparse
import functools
import json
import os
import sys
import time
from array import array
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import shard_ids  # noqa: E402

SEP32 = 0xFFFFFFFF
SEP16 = 0xFFFF
KEEP = 65534          # new ids 0..65533
OVERFLOW = 65534
CHUNK_TOKENS = 1 << 24  # 64 MiB of u32 per read


# Exit status 2, as argparse's errors.
die = functools.partial(benchlib.die, code=2)


def read_u32_chunks(path):
    size = os.path.getsize(path)
    if size % 4:
        die(f'{path}: size {size} is not a multiple of 4 (not a u32 token file)')
    with open(path, 'rb') as f:
        while True:
            b = f.read(CHUNK_TOKENS * 4)
            if not b:
                break
            a = array('I')
            a.frombytes(b)
            if sys.byteorder != 'little':
                a.byteswap()
            yield a


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('src')
    ap.add_argument('out')
    ap.add_argument('--no-map', action='store_true', help='do not write u16-map.json')
    a = ap.parse_args()
    if array('I').itemsize != 4 or array('H').itemsize != 2 or array('Q').itemsize != 8:
        die('unexpected array item sizes on this platform')
    ks = shard_ids(a.src)
    if not ks:
        die(f'no tokenized.N in {a.src}')
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()

    # pass 1: frequencies over all shards
    counts = Counter()
    total = 0
    for k in ks:
        for chunk in read_u32_chunks(os.path.join(a.src, f'tokenized.{k}')):
            counts.update(chunk)
            total += len(chunk)
    seps = counts.pop(SEP32, 0)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    remap = {old: (new if new < KEEP else OVERFLOW) for new, (old, _) in enumerate(ranked)}
    remap[SEP32] = SEP16
    overflow_ids = max(0, len(ranked) - KEEP)
    overflow_tokens = sum(c for _, c in ranked[KEEP:])
    t1 = time.perf_counter()

    # pass 2: rewrite tokens and offsets
    get = remap.__getitem__
    docs = 0
    for k in ks:
        src_tok = os.path.join(a.src, f'tokenized.{k}')
        src_off = os.path.join(a.src, f'offset.{k}')
        dst_tok = os.path.join(a.out, f'tokenized.{k}')
        dst_off = os.path.join(a.out, f'offset.{k}')
        with open(dst_tok + '.tmp', 'wb') as f:
            for chunk in read_u32_chunks(src_tok):
                out = array('H', map(get, chunk))
                if sys.byteorder != 'little':
                    out.byteswap()
                out.tofile(f)
        os.replace(dst_tok + '.tmp', dst_tok)
        if not os.path.exists(src_off):
            die(f'{src_off} missing')
        offs = array('Q')
        with open(src_off, 'rb') as f:
            offs.frombytes(f.read())
        if sys.byteorder != 'little':
            offs.byteswap()
        tok_size = os.path.getsize(src_tok)
        prev = -1
        for i, o in enumerate(offs):
            if o % 4 or o >= tok_size or o <= prev:
                die(f'{src_off}[{i}] = {o}: not an increasing multiple of 4 inside tokenized.{k}')
            prev = o
        new = array('Q', (o // 2 for o in offs))  # (o / 4) tokens * 2 bytes
        if sys.byteorder != 'little':
            new.byteswap()
        with open(dst_off, 'wb') as f:
            new.tofile(f)
        # spot-check: every document starts with the separator
        with open(dst_tok, 'rb') as f:
            for i in range(0, len(offs), max(1, len(offs) // 1000)):
                f.seek(offs[i] // 2)
                if f.read(2) != b'\xff\xff':
                    die(f'tokenized.{k}: no separator at document {i} (offset {offs[i]})')
        docs += len(offs)
    t2 = time.perf_counter()

    if not a.no_map:
        with open(os.path.join(a.out, 'u16-map.json'), 'w') as f:
            json.dump({'kept': {str(new): old for new, (old, _) in enumerate(ranked[:KEEP])},
                       'overflow_id': OVERFLOW, 'separator': SEP16}, f)
    print(json.dumps({
        'src': a.src, 'out': a.out, 'shards': len(ks), 'tokens': total, 'documents': docs,
        'separators': seps, 'distinct_ids': len(ranked), 'overflow_ids': overflow_ids,
        'overflow_tokens': overflow_tokens, 'count_s': round(t1 - t0, 3),
        'rewrite_s': round(t2 - t1, 3), 'total_s': round(t2 - t0, 3),
    }), flush=True)


if __name__ == '__main__':
    main()
