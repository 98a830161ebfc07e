"""Peak memory of `llmlaunch checkpoint convert` against the checkpoint's size (issue 12).

Writes a layout-free checkpoint (fp32 weights and both Adam moments, tp 2, as ranks write it) of a
llama several layers deep, then converts it to tp 4 in a fresh process and reads that process's
peak RSS (getrusage of the child). The baseline is a fresh process that imports the same modules
and does nothing: the difference is what the conversion itself held. Goal: near one layer's state,
far below the checkpoint's size; the bound the code keeps is one tensor's state at a time (its
full form plus the slices being written), so the embedding table, larger than a layer here, is
the peak.

Run: python benchmarks/bench_convert.py [--layers 8] [--hidden 1024] [--keep DIR]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS = ("import torch, llmlaunch.launcher.checkpoint_tools, llmlaunch.cli.checkpoint, "
           "llmlaunch.model.sharding")


def child_peak_rss_bytes(argv: list[str]) -> tuple[int, float]:
    """(peak RSS of a fresh child process running argv, its wall seconds). ru_maxrss of
    RUSAGE_CHILDREN is the largest over children waited for so far, so each measurement runs in
    a throwaway intermediate process."""
    script = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
              "rc = subprocess.run(sys.argv[1:]).returncode; "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "
              "time.perf_counter() - t, rc)")
    out = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                         check=True).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"{' '.join(argv)} failed")
    return int(out[0]), float(out[1])


def write_checkpoint(root: Path, layers: int, hidden: int, tp: int) -> tuple[Path, int, int]:
    """A complete tag under root/checkpoints; returns (tag dir, largest tensor's state bytes,
    largest layer's state bytes)."""
    import json

    import torch

    from llmlaunch.launcher.canonical import tensor_file, write_meta
    from llmlaunch.launcher.checkpoint import LATEST, MARKER
    from llmlaunch.model.sharding import canonical_shapes, shard_tensor, tp_split
    from llmlaunch.topology.model_spec import ModelSpec

    spec = ModelSpec(arch="llama", layers=layers, hidden=hidden, heads=hidden // 64,
                     kv_heads=hidden // 256, ffn_hidden=hidden * 11 // 4, vocab=32000,
                     seq_len=2048, name=f"bench llama {layers}x{hidden}")
    tag_dir = root / "checkpoints" / "step00000100"
    shapes = canonical_shapes(spec)
    per_layer: dict[str, int] = {}
    largest = 0
    for name, shape in shapes.items():          # one tensor at a time: the writer stays small too
        numel = 1
        for d in shape:
            numel *= d
        state_bytes = 3 * 4 * numel
        largest = max(largest, state_bytes)
        layer = name.split(".")[1] if name.startswith("blocks.") else name
        per_layer[layer] = per_layer.get(layer, 0) + state_bytes
        full = torch.randn(shape)
        split = tp_split(spec, name)
        for rank in range(tp):
            piece = shard_tensor(full, split, rank, tp).clone()
            path = tensor_file(tag_dir, name, rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"param": piece, "exp_avg": piece * 0.1, "exp_avg_sq": piece.abs()}, path)
        del full
    write_meta(tag_dir, spec=spec, layout={"dp": 1, "pp": 1, "tp": tp}, engine="plain", step=100,
               adam_steps=100, names=sorted(shapes), tp=tp)
    (tag_dir / MARKER).write_text(json.dumps({"tag": tag_dir.name, "step": 100, "engine": "plain",
                                              "layout": {"dp": 1, "pp": 1, "tp": tp,
                                                         "zero_stage": 0},
                                              "global_batch": 8, "model": spec.to_dict()}))
    (tag_dir.parent / LATEST).write_text(tag_dir.name)
    largest_layer = max(v for k, v in per_layer.items() if k.isdigit())
    return tag_dir, largest, largest_layer


def main() -> None:
    from llmlaunch.launcher.canonical import directory_bytes

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--keep", help="write the checkpoint here and keep it (default: a temp dir)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        start = time.perf_counter()
        tag_dir, largest_tensor, largest_layer = write_checkpoint(root, args.layers, args.hidden, 2)
        size = directory_bytes(tag_dir)
        print(f"checkpoint: {args.layers} layers x hidden {args.hidden}, tp 2, "
              f"{size / 2**20:,.0f} MiB (written in {time.perf_counter() - start:.1f} s); "
              f"largest layer's state {largest_layer / 2**20:,.0f} MiB, largest tensor's "
              f"(the embedding) {largest_tensor / 2**20:,.0f} MiB")
        base, _ = child_peak_rss_bytes([sys.executable, "-c", IMPORTS])
        peak, wall = child_peak_rss_bytes([sys.executable, "-m", "llmlaunch", "checkpoint",
                                           "convert", str(tag_dir), "--layout", "dp=1,pp=1,tp=4",
                                           str(root / "converted")])
        held = peak - base
        print(f"baseline (imports only): peak RSS {base / 2**20:,.0f} MiB")
        print(f"convert tp 2 -> 4: peak RSS {peak / 2**20:,.0f} MiB in {wall:.1f} s; above the "
              f"baseline {held / 2**20:,.0f} MiB = {held / size:.2f}x the checkpoint, "
              f"{held / largest_layer:.2f}x one layer, {held / largest_tensor:.2f}x the largest tensor")
        goal = held < size / 4
        print(f"goal (held well below the checkpoint: < 1/4 of it): {'met' if goal else 'MISSED'}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
