"""Checks of an allocation before the expensive start: `python -m llmlaunch.launcher.preflight --config
RUN.yaml` on every rank (the Slurm job body runs it under srun), or `llmlaunch preflight --config
RUN.yaml` locally.

Each rank checks its accelerator and host memory against the plan; all ranks then run a timed
all-reduce over the real backend (NCCL on GPUs, gloo on CPU), which proves every rank reachable; rank
0 checks the free disk for checkpoints and prints the pass/fail table. Exit status 0 only when every
check passed on every rank.

Then the network, per link kind (measure_network): an all-reduce among the ranks of each host (all
hosts at once; `intra_host`) and among one rank per host (the lowest; `inter_host`, absent with one
host), a small and a large buffer each, timed as launcher/device_probe.py times (median of
`repeats` after two warm-ups; the slowest rank's). Rank 0 writes RUN_DIR/preflight.json (schema and
formulas: topology/measured_network.py; docs/launch.md, "Preflight across hosts"), replacing the
previous preflight's, which `llmlaunch plan --network-from` reads. A rank's host is
launcher/hostnet.py's host_name(): its hostname, or LLMLAUNCH_HOSTNAME when set.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from llmlaunch.config import RunConfig
from llmlaunch.run_files import PREFLIGHT
from llmlaunch.topology.layout import Layout

from .entry import exit_process, run_rank
from .hostnet import host_name
from .monitors import missing_packages
from .ops_check import deepspeed_ops_check

GIB = 2**30
PREFLIGHT_JSON = PREFLIGHT


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def checkpoint_bytes(config: RunConfig, precision: str) -> float:
    """One checkpoint tag, every file it holds (launcher/checkpoints/space.py: tag_bytes): the fp32
    weights and both Adam moments of every tensor-parallel slice (12 bytes per parameter, whatever
    the training precision), torch.save's containers, and the manifest."""
    from .checkpoints.space import tag_bytes

    return tag_bytes(config.model_spec(), config.layout.tp)


def disk_check(config: RunConfig, run_dir: Path, precision: str) -> Check:
    from .checkpoints.space import human_bytes

    ckpt = Path(config.checkpoint.dir)
    ckpt = ckpt if ckpt.is_absolute() else run_dir / ckpt
    probe = ckpt if ckpt.exists() else run_dir
    free = shutil.disk_usage(probe).free
    tag = checkpoint_bytes(config, precision)
    need = tag * (config.checkpoint.keep + 1)
    return Check("disk for checkpoints", free >= need,
                 f"{human_bytes(free)} free at {probe}, {human_bytes(need)} needed "
                 f"({config.checkpoint.keep} kept + 1 being written, {human_bytes(tag)} each)")


def accelerator_visible() -> bool:
    """torch.cuda.is_available(), without importing torch where no GPU driver is loaded (no
    /proc/driver/nvidia, no ROCm /dev/kfd: CUDA and ROCm cannot run there)."""
    if not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/kfd").exists()):
        return False
    import torch

    return torch.cuda.is_available()


def memory_checks(config: RunConfig, layout: Layout, world: int, local_world: int,
                  precision: str) -> list[Check]:
    """Device memory (GPU) or host memory (CPU) against the planner's worst stage."""
    import psutil

    from llmlaunch.topology.plan_inputs import estimate_layout

    on_gpu = accelerator_visible()
    try:   # the bytes a stage holds do not depend on the device's speed: no measuring of this host
        need = estimate_layout(config.plan_inputs(precision, layout=layout, measure=False),
                               layout).worst_stage.total
    except ValueError:  # no prediction (a cluster.gpu the catalog does not know)
        need = 0.0
    checks = []
    if on_gpu:
        import torch

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


def message_sizes(backend: str) -> tuple[int, int, int]:
    """(small bytes, large bytes, repeats) of the timed all-reduces: a few KiB for the latency
    (device_probe.SMALL_ALLREDUCE_BYTES) and, for the bandwidth, 256 MiB on NCCL (where nccl-tests'
    all_reduce_perf reaches its plateau on NVLink and InfiniBand) or 4 MiB on gloo (loopback or
    Ethernet TCP; bigger only takes longer)."""
    from .device_probe import LARGE_ALLREDUCE_BYTES, SMALL_ALLREDUCE_BYTES

    if backend == "nccl":
        return SMALL_ALLREDUCE_BYTES, 256 * 2**20, 20
    return SMALL_ALLREDUCE_BYTES, LARGE_ALLREDUCE_BYTES, 10


def timed_allreduce_s(group, nbytes: int, repeats: int, device) -> float:
    """Median seconds of an all-reduce of `nbytes` over `group`, the slowest member's."""
    import torch
    import torch.distributed as dist

    from .device_probe import _timed

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    buffer = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=device)
    mine = _timed(lambda: dist.all_reduce(buffer, group=group), repeats, synchronize)
    slowest = torch.tensor([mine], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
    return float(slowest.item())


def measure_network(timeout_s: float) -> tuple[list[str], dict, dict | None]:
    """All ranks together: (every rank's host, {host: intra-host link_figures}, the inter-host
    link_figures or None with one host); see the module docstring."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from llmlaunch.topology.measured_network import host_groups, link_figures

    backend = dist.get_backend()
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    hostnames = [None] * world
    dist.all_gather_object(hostnames, host_name())
    per_host, leaders = host_groups(hostnames)
    timeout = timedelta(seconds=timeout_s)
    # every rank creates every group, in the same order (torch.distributed.new_group's rule)
    intra_groups = {host: dist.new_group(ranks, timeout=timeout)
                    for host, ranks in per_host.items() if len(ranks) > 1}
    inter_group = dist.new_group(leaders, timeout=timeout) if len(leaders) > 1 else None
    small, large, repeats = message_sizes(backend)

    def figures(group, size: int) -> dict:
        return link_figures(group_size=size, small_bytes=small, large_bytes=large, repeats=repeats,
                            small_s=timed_allreduce_s(group, small, repeats, device),
                            large_s=timed_allreduce_s(group, large, repeats, device))

    mine = {}
    host = hostnames[rank]
    if host in intra_groups:                        # every host's group at once
        mine["intra_host"] = figures(intra_groups[host], len(per_host[host]))
    dist.barrier()
    if inter_group is not None and rank in leaders:
        mine["inter_host"] = figures(inter_group, len(leaders))
    dist.barrier()
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    intra = {h: everyone[ranks[0]]["intra_host"] for h, ranks in per_host.items()
             if "intra_host" in everyone[ranks[0]]}
    inter = everyone[leaders[0]].get("inter_host") if inter_group is not None else None
    return hostnames, intra, inter


def network_table(doc: dict) -> str:
    """preflight.json's links as rank 0 prints them."""
    from tabulate import tabulate

    rows = [[kind, link["group_size"], f"{link['bus_gb_per_s']:.3g}", f"{link['latency_us']:.4g}",
             f"{link['small_bytes']} / {link['large_bytes']}", link["repeats"]]
            for kind, link in doc["links"].items()]
    table = tabulate(rows, headers=["link", "ranks", "bus GB/s", "latency us",
                                    "bytes small / large", "repeats"], tablefmt="simple")
    return "\n".join([table, *(f"{kind}: absent ({why})" for kind, why in doc["absent"].items())])


def host_checks(config: RunConfig, layout: Layout, run_dir: Path, local_world: int) -> list[Check]:
    """The checks a local run's supervisor makes on its host before starting `local_world` ranks
    (launcher/job.py; the ranks check their extension build locks themselves): accelerators and
    memory against the plan, free disk for checkpoints."""
    from .engine import run_precision

    precision = run_precision(config, accelerator_visible())
    checks = memory_checks(config, layout, local_world, local_world, precision)
    checks.append(disk_check(config, run_dir, precision))
    return checks


def run_checks(config: RunConfig, run_dir: Path) -> list[Check]:
    from .engine import rank_context, run_precision

    ctx = rank_context(config)    # the layout built once, checked against the job's size
    rank, world = ctx.rank, ctx.world
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE")
                      or min(world, config.cluster.gpus_per_node))
    import torch

    precision = run_precision(config, torch.cuda.is_available())
    checks = memory_checks(config, ctx.layout, world, local_world, precision)
    checks.append(build_lock_check())
    checks.append(Check("DeepSpeed ops", *deepspeed_ops_check(
        torch.cuda.is_available(), config.layout.offload, host_name())))
    missing = missing_packages(config.train.monitors) if rank == 0 else []
    checks.append(Check("train.monitors", not missing, "; ".join(missing) or (
        ", ".join(config.train.monitors) or "none") + " (metrics.jsonl always)"))
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


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def format_table(checks: list[Check]) -> str:
    from tabulate import tabulate

    return tabulate([[c.name, "pass" if c.ok else "FAIL", c.detail] for c in checks],
                    headers=["check", "", "detail"], tablefmt="simple")


def preflight(config: RunConfig, run_dir: Path) -> int:
    """This rank's checks, everyone's verdict, and the table (rank 0, and any rank that failed);
    then the network per link kind, written by rank 0 to RUN_DIR/preflight.json."""
    checks = run_checks(config, run_dir)
    everyone_ok = gather_verdict(checks)
    rank = int(os.environ["RANK"])
    if rank == 0 or not all(c.ok for c in checks):
        print(f"preflight, rank {rank}:\n{format_table(checks)}", flush=True)
    hostnames, intra, inter = measure_network(config.train.collective_timeout_s)
    if rank == 0:
        import torch.distributed as dist

        from llmlaunch.atomic import write_text_atomic
        from llmlaunch.topology.measured_network import preflight_document

        doc = preflight_document(hostnames=hostnames, backend=dist.get_backend(),
                                 device=device_name(),
                                 date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 intra=intra, inter=inter, checks_passed=everyone_ok)
        write_text_atomic(run_dir / PREFLIGHT_JSON, json.dumps(doc, indent=2) + "\n")
        print(f"preflight: network, all-reduce per link kind (bus bandwidth 2(n-1)/n x bytes / "
              f"time, nccl-tests; latency: the small one's time), in {run_dir / PREFLIGHT_JSON}:\n"
              f"{network_table(doc)}", flush=True)
        print("preflight: all ranks passed" if everyone_ok else "preflight: FAILED on some rank",
              flush=True)
    return 0 if everyone_ok else 1


def main(argv: list[str] | None = None) -> int:
    return run_rank(preflight, argv, "llmlaunch.launcher.preflight", __doc__.split("\n")[0],
                    role="preflight")


if __name__ == "__main__":
    exit_process(main())
