"""DeepSpeed's universal checkpoint on an llmlaunch checkpoint, against llmlaunch's layout-free state
(docs/checkpoints.md).

Trains a tiny llama (grouped-query attention) for 4 steps on dp 1 x pp 2 x tp 2 with a checkpoint,
runs DeepSpeed's `ds_to_universal` on it (with `--inject_missing_state`: without it the tool
refuses, since only a client that describes its tensor-parallel parameters, as Megatron-DeepSpeed
does, writes `universal_checkpoint_info`), and compares every merged fp32 weight and Adam moment
with the full tensors llmlaunch's canonical state gives. Prints each parameter's shapes and
whether the two agree, the counts, and the seconds and bytes of both.

Run: python benchmarks/universal_checkpoint_compare.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUT = ["layout.dp=1", "layout.pp=2", "layout.tp=2", "layout.grad_accum=8"]
MODEL = ["model.arch=llama", "model.heads=8", "model.kv_heads=4"]
BLOCK_KEYS = ("attn.out.weight", "attn.qkv.weight", "ln1.weight", "ln2.weight", "mlp.down.weight",
              "mlp.gate_up.weight")


def universal_to_canonical(layers: int) -> dict[str, str]:
    """DeepSpeed's pipeline layer names (layer index . local name) -> canonical names, for
    llmlaunch's llama pipeline: 0 embedding, 1..L blocks, L+1 final norm, L+2 head."""
    names = {"0.weight": "embed.token.weight", f"{layers + 1}.weight": "final_norm.weight",
             f"{layers + 2}.weight": "head.weight"}
    for i in range(1, layers + 1):
        for key in BLOCK_KEYS:
            names[f"{i}.{key}"] = f"blocks.{i - 1}.{key}"
    return names


def main() -> None:
    import torch

    from llmlaunch.launcher.canonical import CanonicalReader, directory_bytes

    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="uc-compare-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    try:
        run = root / "run"
        sets = [x for s in ["train.steps=4", "checkpoint.every=4", *MODEL, *LAYOUT] for x in ("--set", s)]
        subprocess.run([sys.executable, "-m", "llmlaunch", "train", "--config", "tiny-cpu",
                        "--run-dir", str(run), *sets], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tag = run / "checkpoints" / "step00000004"
        out = root / "universal"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                               "--input_folder", str(tag), "--output_folder", str(out),
                               "--inject_missing_state"], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"ds_to_universal failed:\n{proc.stderr[-2000:]}")
        reader = CanonicalReader(tag)
        agree = differ = 0
        print(f"{'universal name':22s} {'canonical name':28s} {'universal':>12s} {'canonical':>12s}  fp32/exp_avg/exp_avg_sq")
        for uname, cname in universal_to_canonical(reader.spec.layers).items():
            full = reader.full(cname)
            marks = []
            for key, ukey in (("param", "fp32"), ("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq")):
                got = torch.load(out / "zero" / uname / f"{ukey}.pt", weights_only=False)["param"]
                same = got.shape == full[key].shape and torch.equal(got, full[key])
                agree, differ = agree + same, differ + (not same)
                marks.append("equal" if same else "differs")
                if key == "param":
                    shapes = (str(tuple(got.shape)), str(tuple(full[key].shape)))
            print(f"{uname:22s} {cname:28s} {shapes[0]:>12s} {shapes[1]:>12s}  {'/'.join(marks)}")
        print(f"\n{agree} of {agree + differ} tensors equal, {differ} differ")
        print(f"ds_to_universal: {seconds:.1f} s (a process, imports included), "
              f"{directory_bytes(out) / 2**20:.1f} MiB written; llmlaunch's canonical state is "
              f"written with the checkpoint: {directory_bytes(tag / 'canonical') / 2**20:.1f} MiB "
              f"of the tag's {directory_bytes(tag) / 2**20:.1f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
