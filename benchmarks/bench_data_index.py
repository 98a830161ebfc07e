"""The sample index at scale (data/sample_index.py) beside today's loader (data/loader.py).

    flock /tmp/llmlaunch-heavy.lock python benchmarks/bench_data_index.py [--windows 1e9]
        [--documents 1e6] [--read 100000] [--old-windows 1e8]

A synthetic source (no token data: document lengths drawn from a seeded RNG, reads return zeros)
of --documents documents holding --windows windows of seq_len + 1 tokens. Each phase runs in a
fresh process and reports its own peak resident memory (VmHWM) and time:

* build: the index of one epoch (document order, cumulative ends, window permutation), as the
  pre-start step builds it; its files on disk;
* read: a rank opening that index and reading --read consecutive samples of its replica, as the
  trainer does (the token reads return zeros), resident memory before and after;
* old loader: today's ShardSampler materialising one epoch's permutation of --old-windows windows
  (8 bytes a window, in every rank); its cost at --windows is the same formula, printed as such.

The stated bound: building needs about 16 bytes per entry of one chunk or bucket of the external
shuffle (data/permutation.py, 2^22 entries: ~100 MB) plus 16 bytes per document; a rank reading it
stays under 100 MB resident.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEQ_LEN = 8
GLOBAL_BATCH = 1024


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_source(windows: int, documents: int):
    from llmlaunch.data.sources import SourceSpec, TokenSource

    tokens = windows * SEQ_LEN + 1

    class Synthetic(TokenSource):
        def __init__(self):
            super().__init__(SourceSpec(path="synthetic", name="synthetic"), "flat", [])
            self.tokens, self.documents, self.vocab_size = tokens, documents, 50_000

        def document_ends(self):
            rng = np.random.default_rng(0)
            weights = rng.random(documents) + 0.5
            ends = np.floor(np.cumsum(weights) / weights.sum() * tokens).astype(np.int64)
            ends[-1] = tokens
            for start in range(0, documents, 1 << 22):
                yield ends[start:start + (1 << 22)]

        def read(self, start, length, out=None):
            out = np.empty(length, np.int64) if out is None else out
            out[:] = 0
            return out

        def fingerprint(self):
            return [["synthetic", windows, documents]]

    return Synthetic()


def phase_build(args) -> dict:
    from llmlaunch.data.sample_index import build_for_sources

    started = time.perf_counter()
    directory = build_for_sources([synthetic_source(args.windows, args.documents)],
                                  Path(args.root), seed=0, seq_len=SEQ_LEN,
                                  global_batch=GLOBAL_BATCH, samples=args.windows)
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_rss_mb(),
            "disk_mb": sum(p.stat().st_size for p in directory.iterdir()) / 2**20,
            "directory": str(directory)}


def phase_read(args) -> dict:
    from llmlaunch.data.batch_stream import ReplicaBatches
    from llmlaunch.data.sample_index import SampleIndex

    before = rss_mb()
    index = SampleIndex(Path(args.directory), [synthetic_source(args.windows, args.documents)])
    stream = iter(ReplicaBatches(index, global_batch=GLOBAL_BATCH, micro_batch=8, dp=8, dp_rank=3,
                                 start_step=args.windows // GLOBAL_BATCH // 2))
    started = time.perf_counter()
    for _ in range(args.read // 8):
        next(stream)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "us_per_sample": seconds / args.read * 1e6, "rss_before_mb": before,
            "rss_after_mb": rss_mb(), "peak_mb": peak_rss_mb()}


def phase_old(args) -> dict:
    from llmlaunch.data.loader import ShardSampler

    started = time.perf_counter()
    sampler = ShardSampler(args.old_windows, micro_batch_size=8, dp_size=8, dp_rank=3, seed=0)
    sampler.next_indices()
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_rss_mb()}


def run_phase(name: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--windows", str(args.windows), "--documents",
           str(args.documents), "--read", str(args.read), "--old-windows", str(args.old_windows),
           "--root", args.root, *[x for k, v in extra.items() for x in (f"--{k}", str(v))]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=lambda v: int(float(v)), default=10**9)
    parser.add_argument("--documents", type=lambda v: int(float(v)), default=10**6)
    parser.add_argument("--read", type=lambda v: int(float(v)), default=100_000)
    parser.add_argument("--old-windows", type=lambda v: int(float(v)), default=10**8)
    parser.add_argument("--phase", choices=("build", "read", "old"))
    parser.add_argument("--root", default="")
    parser.add_argument("--directory", default="")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps({"build": phase_build, "read": phase_read, "old": phase_old}[args.phase](args)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-index-", dir=os.environ.get("TMPDIR")) as root:
        args.root = root
        print(f"sample index: {args.windows:,} windows of {SEQ_LEN + 1} tokens over "
              f"{args.documents:,} documents (synthetic), global batch {GLOBAL_BATCH}")
        build = run_phase("build", args)
        print(f"  build  {build['seconds']:8.1f} s   peak {build['peak_mb']:7.0f} MB   "
              f"on disk {build['disk_mb']:8.0f} MB")
        read = run_phase("read", args, directory=build["directory"])
        print(f"  read   {read['seconds']:8.1f} s   peak {read['peak_mb']:7.0f} MB   "
              f"({args.read:,} samples of one rank, {read['us_per_sample']:.1f} us each; resident "
              f"{read['rss_before_mb']:.0f} MB before opening, {read['rss_after_mb']:.0f} MB after)")
    old = run_phase("old", args)
    formula_gb = 8 * args.windows / 1e9
    print(f"today's loader (ShardSampler, one epoch's permutation in every rank):")
    print(f"  {args.old_windows:,} windows: {old['seconds']:.1f} s, peak {old['peak_mb']:.0f} MB "
          f"(measured); at {args.windows:,} windows: 8 bytes x windows = {formula_gb:.1f} GB per "
          "rank (formula)")
    print(f"rank memory: index {read['peak_mb']:.0f} MB vs today's {old['peak_mb']:.0f} MB at "
          f"{args.old_windows:,} windows ({old['peak_mb'] / read['peak_mb']:.1f}x); bound 100 MB: "
          f"{'met' if read['peak_mb'] < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
