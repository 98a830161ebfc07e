"""Peak memory of `llmlaunch checkpoint convert` against the checkpoint's size (issue 12).

Writes a layout-free checkpoint (fp32 weights and both Adam moments, tp 2, as ranks write it) of a
llama several layers deep, then converts it to tp 4 in a fresh process and reads that process's
peak RSS (getrusage of the child). The baseline is a fresh process that imports the same modules
and does nothing: the difference is what the conversion itself held. It runs at two depths: the
goal is memory held that does not grow with the model (within 25% while the checkpoint grows
~3x), far below the checkpoint's size. What the code holds at a time is one tensor's state: its
source slices (memory-mapped), one full fp32 tensor and the target slice being written, so the
largest tensor (here the embedding table, larger than a layer) sets the peak.

Run: python benchmarks/bench_convert.py [--layers 4 16] [--hidden 1024]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORTS = ("import torch, llmlaunch.launcher.checkpoints.tools, "
           "llmlaunch.launcher.checkpoints.store, llmlaunch.cli.checkpoint, llmlaunch.model.sharding")


def child_peak_rss_bytes(argv: list[str]) -> tuple[int, float]:
    """(peak RSS of a fresh child process running argv, its wall seconds). ru_maxrss of
    RUSAGE_CHILDREN is the largest over children waited for so far, so each measurement runs in
    a throwaway intermediate process."""
    script = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
              "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
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
    import torch

    from llmlaunch.launcher.checkpoints.canonical import tensor_file
    from llmlaunch.launcher.checkpoints.digest import file_record
    from llmlaunch.launcher.checkpoints.manifest import Manifest, write_manifest
    from llmlaunch.launcher.checkpoints.tags import LATEST
    from llmlaunch.model.sharding import canonical_shapes, shard_tensor, tp_split
    from llmlaunch.topology.model_spec import ModelSpec

    spec = ModelSpec(arch="llama", layers=layers, hidden=hidden, heads=hidden // 64,
                     kv_heads=hidden // 256, ffn_hidden=hidden * 11 // 4, vocab=32000,
                     seq_len=2048, name=f"bench llama {layers}x{hidden}")
    tag_dir = root / "checkpoints" / "step00000100"
    shapes = canonical_shapes(spec)
    per_layer: dict[str, int] = {}
    files = {}
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
            files[str(path.relative_to(tag_dir))] = file_record(path)
        del full
    write_manifest(tag_dir, Manifest(
        tag=tag_dir.name, step=100, layout={"dp": 1, "pp": 1, "tp": tp, "zero_stage": 0},
        engine="plain", model=spec.to_dict(), global_batch=8, consumed_samples=800,
        adam_steps=100, tp=tp, tensors=sorted(shapes), schedule=None, files=files))
    (tag_dir.parent / LATEST).write_text(tag_dir.name)
    largest_layer = max(v for k, v in per_layer.items() if k.isdigit())
    return tag_dir, largest, largest_layer


def convert_case(root: Path, layers: int, hidden: int, base: int) -> tuple[int, int]:
    """Write a checkpoint of `layers` layers, convert it tp 2 -> 4 in a fresh process, print the
    figures; returns (bytes held above the baseline, checkpoint bytes)."""
    from llmlaunch.launcher.checkpoints.space import directory_bytes

    start = time.perf_counter()
    tag_dir, largest_tensor, largest_layer = write_checkpoint(root / f"L{layers}", layers, hidden, 2)
    size = directory_bytes(tag_dir)
    print(f"{layers} layers x hidden {hidden}, tp 2: checkpoint {size / 2**20:,.0f} MiB (written "
          f"in {time.perf_counter() - start:.1f} s); one layer's state {largest_layer / 2**20:,.0f} "
          f"MiB, the largest tensor's (the embedding) {largest_tensor / 2**20:,.0f} MiB")
    peak, wall = child_peak_rss_bytes([sys.executable, "-m", "llmlaunch", "checkpoint", "convert",
                                       str(tag_dir), "--layout", "dp=1,pp=1,tp=4",
                                       str(root / f"L{layers}-converted")])
    held = peak - base
    print(f"  convert tp 2 -> 4: {wall:.1f} s, peak RSS {peak / 2**20:,.0f} MiB, above the baseline "
          f"{held / 2**20:,.0f} MiB = {held / size:.2f}x the checkpoint, {held / largest_layer:.1f}x "
          f"one layer, {held / largest_tensor:.2f}x the largest tensor")
    shutil.rmtree(root / f"L{layers}", ignore_errors=True)
    shutil.rmtree(root / f"L{layers}-converted", ignore_errors=True)
    return held, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, nargs=2, default=[4, 16], metavar=("FEW", "MANY"))
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        base, _ = child_peak_rss_bytes([sys.executable, "-c", IMPORTS])
        print(f"baseline (a process that imports the same modules): peak RSS {base / 2**20:,.0f} MiB")
        few, few_size = convert_case(root, args.layers[0], args.hidden, base)
        many, many_size = convert_case(root, args.layers[1], args.hidden, base)
        growth = many / few
        print(f"checkpoint x{many_size / few_size:.1f} -> held memory x{growth:.2f}: "
              f"{'bounded by a tensor, not the model (goal met)' if growth < 1.25 else 'grows with the model (goal MISSED)'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
