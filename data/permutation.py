"""A uniformly random permutation of [0, n) written to a ``.npy`` file in bounded memory.

n up to a chunk (2^22 entries) is shuffled in memory. Larger n goes through disk in two passes (the
scatter-then-shuffle method: Rao 1961, Sandelius 1962): every value, in chunks, is sent to one of B
buckets chosen uniformly at random, appended to that bucket's file; then each bucket is shuffled in
memory and written out in turn. Each bucket's contents are a uniform random subset and its order a
uniform shuffle, so the whole is a uniform permutation. Memory: about 24 bytes per entry of one chunk
or one bucket (~n/B entries), whichever is larger: ~100 MB for 2^22 entries (10^9 entries: 239 buckets).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

CHUNK = 1 << 22
MAX_BUCKETS = 4096


def index_dtype(n: int) -> np.dtype:
    """uint32 for indices below 2^32, else uint64 (4 or 8 bytes per entry on disk)."""
    return np.dtype("<u4") if n <= 2**32 else np.dtype("<u8")


def _npy_writer(path: Path, dtype: np.dtype, n: int):
    """An open .npy file of n entries of dtype, its header written: the entries follow with
    write(). Written through a file, not a memmap, whose dirty pages would count in this process's
    resident memory until written back (4 GB for 10^9 entries)."""
    handle = open(path, "wb")
    np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": (n,)})
    return handle


def write_permutation(path: Path, n: int, rng: np.random.Generator, chunk: int = CHUNK) -> None:
    """Write a uniform random permutation of range(n) to `path` (.npy, index_dtype(n))."""
    dtype = index_dtype(n)
    if n <= chunk:
        with _npy_writer(path, dtype, n) as out:
            out.write(rng.permutation(n).astype(dtype).tobytes())
        return
    buckets = min(MAX_BUCKETS, math.ceil(n / chunk))
    bucket_type = np.uint8 if buckets <= 256 else np.uint16
    with tempfile.TemporaryDirectory(prefix=".perm-", dir=Path(path).parent) as tmp:
        names = [Path(tmp) / f"{k}" for k in range(buckets)]
        handles = [open(name, "wb") for name in names]
        try:
            for start in range(0, n, chunk):
                values = np.arange(start, min(n, start + chunk), dtype=dtype)
                ids = rng.integers(0, buckets, len(values), dtype=bucket_type)
                order = np.argsort(ids, kind="stable")   # a radix sort for 8/16-bit keys
                bounds = np.searchsorted(ids[order], np.arange(buckets + 1))
                values = values[order]
                del order
                for k in range(buckets):
                    handles[k].write(values[bounds[k]:bounds[k + 1]].tobytes())
        finally:
            for handle in handles:
                handle.close()
        written = 0
        with _npy_writer(path, dtype, n) as out:
            for name in names:
                part = np.fromfile(name, dtype=dtype)
                os.remove(name)
                rng.shuffle(part)
                out.write(part.tobytes())
                written += len(part)
        assert written == n
