"""What a checkpoint costs the training loop: bytes written per parameter per tag, and the time the
loop stalls per save, before and after issue 22 (docs/checkpoints.md, "Cost").

- before: what llmlaunch 0.2 wrote: DeepSpeed's own files (engine.save_checkpoint) plus the
  layout-free copy (every parameter's fp32 weight and Adam moments, written by data-parallel
  replica 0 of each stage and TP rank), all in the loop, then a barrier and the marker.
- after, in the loop (checkpoint.async_save: false): the layout-free state only, the replicas
  taking turns, each file hashed as it is written, the manifest last.
- after (the default): the same, the state copied to CPU memory in the loop and written beside it
  on a thread.

The stall of one save is the wall time of [save, W training steps, wait for the save] minus the
wall time of the W steps trained just before it without saving (paired, so that the drift of a
shared host cancels): what the run loses to the save, contention for the cores included. Two configs on CPU (gloo): tiny-cpu (4 ranks, dp 2 x pp 2,
ZeRO-1, the pipeline engine) and a 1B-shaped one (TinyLlama-1.1B's width: hidden 2048, 32 heads,
4 KV heads, MLP 5632, vocabulary 32000, but 2 layers: 0.22 B parameters; 1 rank, the plain
engine, ZeRO-0). Random tokens; the figures do not depend on them.

`--hashes` prints this host's throughput of hashlib's digests and of a write with fsync (the
choice of SHA-256 in launcher/checkpoints/digest.py).

Run: python benchmarks/bench_checkpoint.py [--only tiny|1b] [--saves 3] [--dir DIR]
     python benchmarks/bench_checkpoint.py --hashes [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "tiny": {"nproc": 4, "sets": []},
    "1b": {"nproc": 1, "sets": [
        "model.arch=llama", "model.layers=2", "model.hidden=2048", "model.heads=32",
        "model.kv_heads=4", "model.ffn_hidden=5632", "model.vocab=32000", "model.seq_len=128",
        "layout.dp=1", "layout.pp=1", "layout.tp=1", "layout.micro_batch=1",
        "layout.grad_accum=1", "layout.zero_stage=0", "cluster.gpus_per_node=1"]},
}
MODES = ("before", "after, in the loop", "after, beside the loop")


# ---------------------------------------------------------------------------------------------
# on each rank

def save_before(run, ckpt_dir: Path, step: int) -> None:
    """llmlaunch 0.2's save, reconstructed: DeepSpeed's files, the layout-free copy by replica 0
    (torch.save per file, in the loop), a barrier, the marker by rank 0."""
    import torch
    import torch.distributed as dist

    from llmlaunch.atomic import write_atomic, write_text_atomic
    from llmlaunch.launcher.checkpoints.canonical import get_state, owned_parameters, tensor_file

    tag = f"step{step:08d}"
    run.engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step},
                               save_latest=False)
    module = run.engine.module
    for name, param in owned_parameters(module):
        state = get_state(run.engine, param)
        if run.dp_rank == 0:
            path = tensor_file(ckpt_dir / tag, name, module.tp_group.rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda f, state=state: torch.save(state, f))
    dist.barrier()
    if dist.get_rank() == 0:
        write_text_atomic(ckpt_dir / tag / "llmlaunch_complete.json", json.dumps({"step": step}))
    dist.barrier()


def timed_steps(run, batches, count: int) -> list[float]:
    import torch.distributed as dist

    out = []
    for _ in range(count):
        dist.barrier()
        start = time.perf_counter()
        run.train_step(batches)
        out.append(time.perf_counter() - start)
    return out


def driver(args) -> None:
    import torch.distributed as dist

    from llmlaunch.config import load_run_config
    from llmlaunch.launcher.checkpoints.space import directory_bytes
    from llmlaunch.launcher.checkpoints.store import CheckpointStore
    from llmlaunch.launcher.engine import build_engine, rank_context
    from llmlaunch.launcher.validate import token_batches
    from llmlaunch.topology.params import total_params

    config = load_run_config("tiny-cpu", CONFIGS[args.config]["sets"])
    ctx = rank_context(config)
    run = build_engine(config, ctx)
    batches = token_batches(run.spec, ctx.layout.micro_batch, 1234 + run.dp_rank)
    root = Path(args.work)
    timed_steps(run, batches, 2)                                   # warm-up, Adam's state made
    step_s = statistics.median(timed_steps(run, batches, args.steps))
    window = args.window
    result = {"params": total_params(run.spec), "step_s": step_s, "modes": {}}
    step = 2 + args.steps
    for mode in MODES:
        config.checkpoint.async_save = mode == MODES[2]
        store = CheckpointStore(root / f"mode{MODES.index(mode)}", config, ctx)
        stalls, blocking = [], []
        for _ in range(args.saves):
            base_s = sum(timed_steps(run, batches, window))        # the same steps, no save
            step += window + 1
            run.train_step(batches)
            dist.barrier()
            start = time.perf_counter()
            if mode == MODES[0]:
                save_before(run, store.ckpt_dir, step)
            else:
                store.save(run, step)
            blocking.append(time.perf_counter() - start)
            for _ in range(window):                                # as timed_steps, and the store's poll
                step += 1
                dist.barrier()
                run.train_step(batches)
                store.after_step(step, 1.0, 1.0)
            store.wait()
            dist.barrier()
            stalls.append(time.perf_counter() - start - base_s)
        tag_dir = sorted(store.ckpt_dir.glob("step*"))[-1]
        size = directory_bytes(tag_dir) if ctx.rank == 0 else 0
        result["modes"][mode] = {"bytes_per_param": size / result["params"],
                                 "stall_s": statistics.median(stalls),
                                 "blocking_s": statistics.median(blocking),
                                 "stalls_s": stalls}
        dist.barrier()
        if ctx.rank == 0:
            shutil.rmtree(store.ckpt_dir, ignore_errors=True)
    if ctx.rank == 0:
        (root / "result.json").write_text(json.dumps(result))
    dist.barrier()
    from llmlaunch.launcher.entry import exit_process
    from llmlaunch.model.distributed import finish_distributed

    finish_distributed()
    exit_process(0)


# ---------------------------------------------------------------------------------------------
# the parent

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(name: str, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-ckpt-{name}-", dir=args.dir))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           str(CONFIGS[name]["nproc"]), "--master_addr", "127.0.0.1", "--master_port",
           str(free_port()), __file__, "--driver", "--config", name, "--work", str(work),
           "--saves", str(args.saves), "--steps", str(args.steps), "--window", str(args.window)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name}: ranks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return json.loads((work / "result.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(name: str, result: dict) -> None:
    print(f"\n{name}: {result['params'] / 1e6:,.2f} M parameters, {CONFIGS[name]['nproc']} rank(s), "
          f"median step {result['step_s']:.3f} s")
    before = result["modes"][MODES[0]]
    print(f"  {'':24s} {'bytes/param/tag':>16s} {'stall/save (s)':>15s} {'in save() (s)':>14s}"
          f"  {'x before':>8s}")
    for mode, m in result["modes"].items():
        print(f"  {mode:24s} {m['bytes_per_param']:16.2f} {m['stall_s']:15.3f} "
              f"{m['blocking_s']:14.3f}  {m['stall_s'] / before['stall_s']:8.2f}"
              f"   (stalls {', '.join(f'{s:.3f}' for s in m['stalls_s'])})")


def hashes(args) -> None:
    import hashlib
    import zlib

    data = os.urandom(256 * 2**20)
    print(f"256 MiB, one core, Python {sys.version.split()[0]}:")
    for name in ("sha256", "sha1", "blake2b", "md5", "blake2s"):
        start = time.perf_counter()
        hashlib.new(name, data).digest()
        print(f"  {name:8s} {len(data) / (time.perf_counter() - start) / 2**20:8,.0f} MiB/s")
    start = time.perf_counter()
    zlib.crc32(data)
    print(f"  {'crc32':8s} {len(data) / (time.perf_counter() - start) / 2**20:8,.0f} MiB/s (zlib)")
    path = Path(tempfile.mkdtemp(dir=args.dir)) / "write.bin"
    try:
        start = time.perf_counter()
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        print(f"  write+fsync {len(data) / (time.perf_counter() - start) / 2**20:8,.0f} MiB/s "
              f"into {path.parent}")
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(CONFIGS))
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="steps timed for the median step")
    parser.add_argument("--window", type=int, default=3, help="steps trained after each save")
    parser.add_argument("--dir", default=None, help="where the tags go (default: the temp dir)")
    parser.add_argument("--hashes", action="store_true")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        return driver(args)
    if args.hashes:
        return hashes(args)
    for name in ([args.only] if args.only else list(CONFIGS)):
        report(name, measure(name, args))


if __name__ == "__main__":
    main()
