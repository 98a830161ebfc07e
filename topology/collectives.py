"""Collective and point-to-point communication times (the alpha-beta ring costs whose bus bandwidth
NCCL reports, Thakur et al. 2005), and what an overlapped collective costs the GEMM beside it.

All-reduce moves 2 (n-1)/n of the buffer per GPU, all-gather and reduce-scatter (n-1)/n. Inside a node
the bus bandwidth is the one measured for the collective's buffer size (GpuSpec.allreduce_busbw,
nccl-tests' all_reduce_perf): a 48 MiB tensor-parallel all-reduce on 8 A100s reaches 157 GB/s, not the
235 of a 16 GiB one. Without a measured curve, and across nodes, Hockney's alpha-beta cost per
message: 2 (n-1) steps for an all-reduce, n-1 for the halves, a send one; alpha is the device's
collective_latency_us. A collective overlapped with a GEMM holds NCCL's channels' SMs while it runs,
which the GEMM loses (overlapped_exposed_s).
"""
from __future__ import annotations

import functools
import math

from .hardware import GpuSpec

GB = 1e9


def allreduce_time_s(nbytes: float, group_size: int, bus_gb_per_s: float,
                     latency_s: float = 0.0) -> float:
    """Ring all-reduce: 2 (n-1) steps (reduce-scatter, then all-gather), each GPU sending and
    receiving 2 (n-1)/n of the buffer: 2 (n-1) alpha + 2 (n-1)/n N / B."""
    if group_size <= 1:
        return 0.0
    n = group_size
    return 2 * (n - 1) * latency_s + 2 * (n - 1) / n * nbytes / (bus_gb_per_s * GB)


def allgather_time_s(nbytes: float, group_size: int, bus_gb_per_s: float,
                     latency_s: float = 0.0) -> float:
    """Ring all-gather (or reduce-scatter) of a buffer of nbytes in total: n-1 steps, (n-1)/n of it
    per GPU: (n-1) alpha + (n-1)/n N / B."""
    if group_size <= 1:
        return 0.0
    n = group_size
    return (n - 1) * latency_s + (n - 1) / n * nbytes / (bus_gb_per_s * GB)


@functools.lru_cache(maxsize=4096)
def bus_gb_per_s(nbytes: float, curve: tuple) -> float:
    """The bus bandwidth a collective of an nbytes buffer reaches, read off a measured curve
    ((bytes, GB/s), ... ascending; GpuSpec.allreduce_busbw): between two measured sizes the
    log of the bandwidth is linear in the log of the size; past the largest, its bandwidth; below
    the smallest, that size's time (a latency-bound collective takes as long at any smaller size)."""
    first_size, first_bw = curve[0]
    if nbytes <= first_size:
        return first_bw * nbytes / first_size
    for (size_a, bw_a), (size_b, bw_b) in zip(curve, curve[1:]):
        if nbytes <= size_b:
            f = math.log(nbytes / size_a) / math.log(size_b / size_a)
            return math.exp(math.log(bw_a) + f * (math.log(bw_b) - math.log(bw_a)))
    return curve[-1][1]


def node_collective_time_s(kind: str, nbytes: float, group_size: int, gpu: GpuSpec) -> float:
    """An all-reduce, reduce-scatter or all-gather of an nbytes buffer among GPUs of one node. With
    a measured curve (GpuSpec.allreduce_busbw) the ring's bytes, 2 (n-1)/n N for an all-reduce and
    (n-1)/n N for each half, move at the bus bandwidth that buffer reaches (a ring all-reduce is a
    reduce-scatter then an all-gather of the same buffer; the halves never above the ring bandwidth
    intra_node_gb_per_s, which NVLink SHARP's all-reduce may pass); without one, the alpha-beta
    ring of allreduce_time_s / allgather_time_s."""
    if kind not in ("all-reduce", "reduce-scatter", "all-gather"):
        raise ValueError(f"collective {kind!r} is not all-reduce, reduce-scatter or all-gather")
    if group_size <= 1:
        return 0.0
    n = group_size
    if not gpu.allreduce_busbw:
        if kind == "all-reduce":
            return allreduce_time_s(nbytes, n, gpu.intra_node_gb_per_s, gpu.collective_latency_s)
        return allgather_time_s(nbytes, n, gpu.intra_node_gb_per_s, gpu.collective_latency_s)
    bus = bus_gb_per_s(nbytes, gpu.allreduce_busbw)
    if kind == "all-reduce":
        return 2 * (n - 1) / n * nbytes / (bus * GB)
    return (n - 1) / n * nbytes / (min(bus, gpu.intra_node_gb_per_s) * GB)


def overlapped_exposed_s(comm_s: float, gemm_s: float, comm_sm_share: float) -> float:
    """What a collective launched beside a GEMM adds to it. The collective's kernel holds
    comm_sm_share of the SMs while it runs (NCCL's channels, one thread block on an SM each), so the
    GEMM advances at 1 - comm_sm_share of its speed meanwhile: together they take
    comm + max(0, gemm - comm (1 - share)), i.e. comm - min(gemm, comm (1 - share)) beyond the GEMM
    alone. share 0: the overlap is free (what exceeds the GEMM shows)."""
    return comm_s - min(gemm_s, comm_s * (1.0 - comm_sm_share))


def comm_sm_share(gpu: GpuSpec) -> float:
    """Fraction of the SMs NCCL's kernel occupies (GpuSpec.nccl_channels / sm_count); 0 unknown."""
    return gpu.nccl_channels / gpu.sm_count if gpu.nccl_channels and gpu.sm_count else 0.0


def p2p_time_s(nbytes: float, gb_per_s: float, latency_s: float = 0.0) -> float:
    """One send: alpha + N / B."""
    return latency_s + nbytes / (gb_per_s * GB)
