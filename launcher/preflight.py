"""Checks of an allocation before the expensive start: `python -m llmlaunch.launcher.preflight --config
RUN.yaml` on every rank (the Slurm job body runs it under srun), or `llmlaunch preflight --config
RUN.yaml` locally.

Each rank checks its accelerator and host memory against the plan; all ranks then run a timed
all-reduce over the real backend (NCCL on GPUs, gloo on CPU), which proves every rank reachable; rank
0 checks the free disk for checkpoints and prints the pass/fail table. Exit status 0 only when every
check passed on every rank.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from llmlaunch.config import RunConfig

from .entry import enter_rank, exit_process, run_rank

GIB = 2**30


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def checkpoint_bytes(config: RunConfig, precision: str) -> float:
    """One checkpoint, all ranks together: weights plus optimizer states (DeepSpeed saves both)."""
    from llmlaunch.topology.memory import PRECISIONS
    from llmlaunch.topology.params import total_params

    bytes_per_param = PRECISIONS[precision].weight_bytes + PRECISIONS[precision].optimizer_bytes
    return total_params(config.model_spec()) * bytes_per_param


def disk_check(config: RunConfig, run_dir: Path, precision: str) -> Check:
    ckpt = Path(config.checkpoint.dir)
    ckpt = ckpt if ckpt.is_absolute() else run_dir / ckpt
    probe = ckpt if ckpt.exists() else run_dir
    free = shutil.disk_usage(probe).free
    need = checkpoint_bytes(config, precision) * (config.checkpoint.keep + 1)
    return Check("disk for checkpoints", free >= need,
                 f"{free / GIB:.1f} GiB free at {probe}, {need / GIB:.2f} GiB needed "
                 f"({config.checkpoint.keep} kept + 1 being written)")


def memory_checks(config: RunConfig, world: int, local_world: int, precision: str) -> list[Check]:
    """Device memory (GPU) or host memory (CPU) against the planner's worst stage."""
    import psutil
    import torch

    from llmlaunch.topology.plan_inputs import estimate_layout

    on_gpu = torch.cuda.is_available()
    try:
        need = estimate_layout(config.plan_inputs(precision), config.layout_obj()).worst_stage.total
    except ValueError:  # no prediction (a cluster.gpu the catalog does not know)
        need = 0.0
    checks = []
    if on_gpu:
        count = torch.cuda.device_count()
        checks.append(Check("GPUs visible", count >= local_world,
                            f"{count} visible, {local_world} ranks on this node"))
        total = torch.cuda.get_device_properties(0).total_memory
        checks.append(Check("GPU memory vs plan", total >= need,
                            f"{total / GIB:.1f} GiB per GPU, plan needs {need / GIB:.1f} GiB"))
    available = psutil.virtual_memory().available
    host_need = need * local_world if not on_gpu else 0.0
    checks.append(Check("host memory", available >= host_need,
                        f"{available / GIB:.1f} GiB available"
                        + (f", {local_world} CPU ranks need {host_need / GIB:.2f} GiB" if host_need else "")))
    return checks


def smoke_allreduce(world: int, timeout_s: float) -> Check:
    """init the real backend and all-reduce a tensor of ones: every rank must answer."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    started = time.perf_counter()
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else "cpu"
    ones = torch.ones(1, device=device)
    dist.all_reduce(ones)
    elapsed = time.perf_counter() - started
    ok = int(ones.item()) == world
    return Check(f"all-reduce over {backend}", ok,
                 f"{int(ones.item())} of {world} ranks answered in {elapsed:.2f} s (init included)")


def build_lock_check() -> Check:
    """No stale JIT build lock that would hang deepspeed.initialize (launcher/build_locks.py)."""
    from .build_locks import check_build_locks, extension_build_root

    try:
        check_build_locks()
    except RuntimeError as exc:
        return Check("extension build locks", False, str(exc))
    return Check("extension build locks", True, f"none stale under {extension_build_root()}")


def run_checks(config: RunConfig, run_dir: Path) -> list[Check]:
    rank, world = enter_rank(config)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE")
                      or min(world, config.cluster.gpus_per_node))
    import torch

    from .engine import run_precision

    precision = run_precision(config, torch.cuda.is_available())
    checks = memory_checks(config, world, local_world, precision)
    checks.append(build_lock_check())
    checks.append(smoke_allreduce(world, config.train.collective_timeout_s))
    if rank == 0:
        checks.append(disk_check(config, run_dir, precision))
    return checks


def gather_verdict(checks: list[Check]) -> bool:
    """True when every rank passed every check (a MIN all-reduce of this rank's verdict)."""
    import torch
    import torch.distributed as dist

    device = "cuda" if torch.cuda.is_available() else "cpu"
    flag = torch.tensor([1.0 if all(c.ok for c in checks) else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.item() > 0


def format_table(checks: list[Check]) -> str:
    from tabulate import tabulate

    return tabulate([[c.name, "pass" if c.ok else "FAIL", c.detail] for c in checks],
                    headers=["check", "", "detail"], tablefmt="simple")


def preflight(config: RunConfig, run_dir: Path) -> int:
    """This rank's checks, everyone's verdict, and the table (rank 0, and any rank that failed)."""
    checks = run_checks(config, run_dir)
    everyone_ok = gather_verdict(checks)
    rank = int(os.environ["RANK"])
    if rank == 0 or not all(c.ok for c in checks):
        print(f"preflight, rank {rank}:\n{format_table(checks)}", flush=True)
    if rank == 0:
        print("preflight: all ranks passed" if everyone_ok else "preflight: FAILED on some rank",
              flush=True)
    return 0 if everyone_ok else 1


def main(argv: list[str] | None = None) -> int:
    return run_rank(preflight, argv, "llmlaunch.launcher.preflight", __doc__.split("\n")[0],
                    role="preflight")


if __name__ == "__main__":
    exit_process(main())
