"""Micro-benchmarks of the device a rank runs on: the figures the step-time model takes as input.

`llmlaunch validate` runs `probe_device` on every rank at once, after `deepspeed.initialize` and
before training, so what the ranks measure includes what they do to each other (on a CPU host with
more ranks than cores, each rank's share of the cores). Each figure is the planner's device field
of the same name (topology/data/gpus.yaml):

- peak_tflops: GEMM throughput at the model's own MLP shape, [b s, h] x [h, f/t] (2 m k n FLOPs
  per product), with matmul_efficiency then 1: the GEMM reaches what it reaches.
- gemm_tflops: the rate of every distinct GEMM shape of one block, forward, backward-data and
  backward-weight (topology/gemms.py's list at the run's micro-batch and TP split), keyed by its
  shape "MxNxK[xB]" (GpuSpec.measured_gemm_tflops takes them), with gemm_shapes naming which
  GEMM has which shape. On a GPU, topology.gemm_model.fitted_matmul_efficiency turns them into the
  catalog's matmul_efficiency (validate.json's `fitted`).
- hbm_gb_per_s: an out-of-place add of two tensors of at least 4 Mi elements (read 2, write 1),
  large enough that dispatch time is negligible beside the traffic.
- op_overhead_us: a chain of small autograd ops (elementwise, view, matmul on 8 x 8 tensors)
  forward and backward, divided by the ops the dispatcher saw: host time per op, the device time of
  8 x 8 tensors being negligible.
- collective_latency_us and intra_node_gb_per_s: an all-reduce over all ranks of a 4 KiB and a
  4 MiB buffer; alpha from the small one (2 (n - 1) alpha), bandwidth from the difference (Hockney's
  alpha-beta model, as topology/step_time.allreduce_time_s states it). Not 4 bytes: gloo reduces
  a buffer that small by a shortcut several times faster than its ring, which the model's messages
  (activations, gradients: kilobytes and up) never take.
"""
from __future__ import annotations

import statistics
import time

SMALL_ALLREDUCE_BYTES = 4 * 2**10
LARGE_ALLREDUCE_BYTES = 4 * 2**20
MIN_BANDWIDTH_ELEMENTS = 4 * 2**20


def _timed(fn, repeats: int, synchronize) -> float:
    """Median seconds of fn() over `repeats` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def count_dispatched_ops(fn) -> int:
    """Ops that reach PyTorch's dispatcher while fn() runs (views included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.ops += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.ops


def gemm_tflops(rows: int, inner: int, cols: int, dtype, device, synchronize, repeats: int = 10) -> float:
    import torch

    a = torch.randn(rows, inner, dtype=dtype, device=device)
    b = torch.randn(inner, cols, dtype=dtype, device=device)
    seconds = _timed(lambda: torch.mm(a, b), repeats, synchronize)
    return 2 * rows * inner * cols / seconds / 1e12


def gemm_list_tflops(gemms, dtype, device, synchronize, repeats: int = 10) -> dict:
    """{shape: TFLOP/s} of each distinct (m, n, k, batch) of `gemms` (topology.gemms.Gemm), timed
    as torch.matmul of [batch, m, k] by [batch, k, n] (2 m n k batch FLOPs)."""
    import torch

    rates = {}
    for g in gemms:
        if g.shape in rates:
            continue
        m, n, k = (max(1, int(round(v))) for v in (g.m, g.n, g.k))
        shape = (g.batch, m, k) if g.batch > 1 else (m, k)
        a = torch.randn(*shape, dtype=dtype, device=device)
        b = torch.randn(*((g.batch, k, n) if g.batch > 1 else (k, n)), dtype=dtype, device=device)
        seconds = _timed(lambda: torch.matmul(a, b), repeats, synchronize)
        rates[g.shape] = 2 * m * n * k * g.batch / seconds / 1e12
    return rates


def memory_gb_per_s(elements: int, dtype, device, synchronize, repeats: int = 10) -> float:
    import torch

    x = torch.randn(max(elements, MIN_BANDWIDTH_ELEMENTS), dtype=dtype, device=device)
    y = torch.randn_like(x)
    seconds = _timed(lambda: torch.add(x, y), repeats, synchronize)
    return 3 * x.numel() * x.element_size() / seconds / 1e9


def op_overhead_us(device, synchronize, repeats: int = 20) -> float:
    import torch

    weight = torch.randn(8, 8, device=device, requires_grad=True)

    def chain():
        x = weight
        for _ in range(8):
            x = torch.nn.functional.gelu(x * 1.5 + weight).transpose(0, 1) @ weight
        x.sum().backward()
        weight.grad = None

    chain()
    ops = count_dispatched_ops(chain)
    return _timed(chain, repeats, synchronize) / ops * 1e6


def allreduce_alpha_beta(device, synchronize, group=None,
                         repeats: int = 20) -> tuple[float, float] | None:
    """(alpha in us, bus bandwidth in GB/s) of a ring all-reduce over `group` (all ranks); None
    for a single rank, which has no collective to time."""
    import torch
    import torch.distributed as dist

    n = dist.get_world_size(group)
    if n == 1:
        return None
    small = torch.zeros(SMALL_ALLREDUCE_BYTES // 4, dtype=torch.float32, device=device)
    large = torch.zeros(LARGE_ALLREDUCE_BYTES // 4, dtype=torch.float32, device=device)
    t_small = _timed(lambda: dist.all_reduce(small, group=group), repeats, synchronize)
    t_large = _timed(lambda: dist.all_reduce(large, group=group), repeats, synchronize)
    steps = 2 * (n - 1)
    alpha_s = t_small / steps
    moved = 2 * (n - 1) / n * (LARGE_ALLREDUCE_BYTES - SMALL_ALLREDUCE_BYTES)
    bus_gb_per_s = moved / max(t_large - t_small, 1e-9) / 1e9
    return alpha_s * 1e6, bus_gb_per_s


def probe_device(*, tokens: int, hidden: int, mlp_cols: int, dtype, device, gemms=()) -> dict:
    """Every figure above, measured on this rank; all ranks must call it together. `gemms`: the
    block's GEMM list (topology.gemms.block_gemms) to time one by one."""
    import torch
    import torch.distributed as dist

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    dist.barrier()
    figures = {"peak_tflops": gemm_tflops(tokens, hidden, mlp_cols, dtype, device, synchronize)}
    if gemms:
        figures["gemm_tflops"] = gemm_list_tflops(gemms, dtype, device, synchronize)
        figures["gemm_shapes"] = {f"{g.name}.{g.phase}": g.shape for g in gemms}
    dist.barrier()
    figures["hbm_gb_per_s"] = memory_gb_per_s(tokens * hidden, dtype, device, synchronize)
    dist.barrier()
    figures["op_overhead_us"] = op_overhead_us(device, synchronize)
    dist.barrier()
    collective = allreduce_alpha_beta(device, synchronize)
    if collective is not None:
        figures["collective_latency_us"], figures["intra_node_gb_per_s"] = collective
    return figures


SCALAR_FIGURES = ("peak_tflops", "hbm_gb_per_s", "op_overhead_us", "collective_latency_us",
                  "intra_node_gb_per_s")


def median_gemm_tflops(figures_by_rank: list[dict]) -> dict:
    """{shape: median TFLOP/s over the ranks that measured it}."""
    shapes = sorted({s for f in figures_by_rank for s in f.get("gemm_tflops", {})})
    return {s: statistics.median(f["gemm_tflops"][s] for f in figures_by_rank
                                 if s in f.get("gemm_tflops", {})) for s in shapes}


def device_from_figures(base, figures_by_rank: list[dict]):
    """`base` (a topology.hardware.GpuSpec) with every probed figure replaced by its median over the
    ranks; GEMM throughput is measured at the model's shapes (the list's rates price those shapes,
    the MLP one the rest), so matmul_efficiency becomes 1 and the tile model is off; the measured
    add is what memory-bound kernels get (hbm_efficiency 1); all ranks share one host, so the
    inter-node bandwidth is the measured one too."""
    import dataclasses

    keys = [k for k in SCALAR_FIGURES if any(k in f for f in figures_by_rank)]
    medians = {key: statistics.median(f[key] for f in figures_by_rank if key in f) for key in keys}
    if "intra_node_gb_per_s" in medians:
        medians["inter_node_gb_per_s"] = medians["intra_node_gb_per_s"]
    measured = tuple(sorted(median_gemm_tflops(figures_by_rank).items()))
    return dataclasses.replace(base, matmul_efficiency=1.0, hbm_efficiency=1.0, sm_count=0,
                               measured_gemm_tflops=measured, **medians)
