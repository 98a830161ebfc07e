"""DeepSpeed's universal checkpoint on an llmlaunch checkpoint, against llmlaunch's layout-free state
(docs/checkpoints.md).

Trains a tiny llama (grouped-query attention) for 4 steps on dp 1 x pp 2 x tp 2 with a checkpoint,
has the same 4 ranks load it and write it again as DeepSpeed's own checkpoint (llmlaunch writes
only its layout-free state since issue 22: engine.save_checkpoint on the resumed engine), runs
DeepSpeed's `ds_to_universal` on that (with `--inject_missing_state`: without it the tool
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


def driver(run_dir: Path, out: Path) -> None:
    """On each of the 4 ranks: resume the run's tag into its engine, save it as DeepSpeed's own."""
    from llmlaunch.config import load_run_dir_config
    from llmlaunch.launcher.checkpoints.store import CheckpointStore
    from llmlaunch.launcher.engine import build_engine, rank_context
    from llmlaunch.launcher.entry import exit_process
    from llmlaunch.model.distributed import finish_distributed

    config = load_run_dir_config(run_dir)
    ctx = rank_context(config)
    store = CheckpointStore.of_run(config, run_dir, ctx)
    ctx.start(config.train.collective_timeout_s)
    store.choose()
    run = build_engine(config, ctx, kind=store.engine_for(ctx.layout), schedule=store.schedule())
    step = store.resume(run)
    run.engine.save_checkpoint(str(out), tag=f"step{step:08d}")
    finish_distributed()
    exit_process(0)


def main() -> None:
    import torch

    from llmlaunch.launcher.checkpoints.canonical import CanonicalReader
    from llmlaunch.launcher.checkpoints.manifest import read_manifest
    from llmlaunch.launcher.checkpoints.space import directory_bytes

    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", help="work here and keep it (default: a temp dir)")
    parser.add_argument("--driver", nargs=2, metavar=("RUN_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        return driver(Path(args.driver[0]), Path(args.driver[1]))
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="uc-compare-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    try:
        run = root / "run"
        sets = [x for s in ["train.steps=4", "checkpoint.every=4", *MODEL, *LAYOUT] for x in ("--set", s)]
        subprocess.run([sys.executable, "-m", "llmlaunch", "train", "--config", "tiny-cpu",
                        "--run-dir", str(run), *sets], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tag = run / "checkpoints" / "step00000004"
        deepspeed_dir = root / "deepspeed"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4",
                        "--master_addr", "127.0.0.1", "--master_port", "29655", __file__,
                        "--driver", str(run), str(deepspeed_dir)], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = root / "universal"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                               "--input_folder", str(deepspeed_dir / tag.name),
                               "--output_folder", str(out),
                               "--inject_missing_state"], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"ds_to_universal failed:\n{proc.stderr[-2000:]}")
        reader = CanonicalReader(tag, read_manifest(tag))
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
              f"{directory_bytes(out) / 2**20:.1f} MiB written, from DeepSpeed's checkpoint of "
              f"{directory_bytes(deepspeed_dir) / 2**20:.1f} MiB; llmlaunch's tag (its layout-free "
              f"state, the only copy) is {directory_bytes(tag) / 2**20:.1f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
