"""Time of one training step: compute, tensor/pipeline/data-parallel communication, bubble, optimizer.

Model (each term a pure function below):
  per micro-batch on a stage:  GEMM FLOPs / (peak * matmul_efficiency)
                               + memory-bound element-wise traffic / HBM bandwidth
                               + TP all-reduces (not overlapped, as in Megatron-LM without SP)
                               + pipeline send/recv of activations and their gradients (blocking in
                                 DeepSpeed's PipelineEngine)
  1F1B pipeline:               (m - 1) * T_slowest + sum_i T_i   (fill and drain cross each stage once;
                               equal stages give (m + p - 1) T, Narayanan et al. 2021 Section 2.2)
  data parallel:               ring all-reduce of the stage's gradients after the flush when p > 1
                               (DeepSpeed's pipeline reduces after the schedule); with p = 1 DeepSpeed
                               overlaps it with the last micro-batch's backward (overlap_comm)
  ZeRO-3:                      per micro-batch parameter all-gathers (forward, backward) and gradient
                               reduce-scatter, prefetched: only what exceeds compute is exposed
  optimizer:                   AdamW is memory-bound: bytes touched per local parameter / HBM bandwidth
Collective costs follow the ring algorithms whose bus bandwidth NCCL reports (Thakur et al. 2005),
with Hockney's alpha-beta cost per message: all-reduce takes 2 (n-1) steps and moves 2 (n-1)/n of the
buffer per GPU, all-gather and reduce-scatter n-1 steps and (n-1)/n; a send is one message. Alpha is
the device's collective_latency_us: it is what a small model's TP all-reduces and pipeline sends cost.

Host overhead: every framework op costs the host op_overhead_us (op_counts.py counts the ops of one
micro-batch). On a GPU the host queues kernels ahead of the device, so a micro-batch takes the longer
of host and device time; on a CPU the host is the device and the two add (He 2022, the overhead
regime).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .flops import (BACKWARD_TO_FORWARD, attention_core_flops_per_token, block_forward_flops_per_token,
                    head_forward_flops_per_token)
from .hardware import GpuSpec
from .memory import FP32_BYTES, Precision
from .model_spec import ModelSpec
from .op_counts import stage_ops_per_micro_batch
from .params import padded_vocab

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


def p2p_time_s(nbytes: float, gb_per_s: float, latency_s: float = 0.0) -> float:
    """One send: alpha + N / B."""
    return latency_s + nbytes / (gb_per_s * GB)


def host_time_s(ops: float, op_overhead_s: float) -> float:
    """Host time to dispatch `ops` framework ops."""
    return ops * op_overhead_s


def pass_time_s(device_s: float, host_s: float, async_dispatch: bool) -> float:
    """A GPU computes while its host queues the next kernels: the longer of the two. A CPU is its
    own host: the sum."""
    return max(device_s, host_s) if async_dispatch else device_s + host_s


def bubble_fraction(pp: int, micro_batches: int, virtual_stages: int = 1) -> float:
    """Share of a 1F1B step that a stage sits idle: (p - 1) / (m + p - 1); interleaved with v
    chunks per rank the bubble shrinks v-fold: (p - 1) / (v m + p - 1).
    (Narayanan et al. 2021 state it relative to the ideal time, (p - 1) / m; see bubble_ratio.)"""
    return (pp - 1) / (virtual_stages * micro_batches + pp - 1)


def bubble_ratio(pp: int, micro_batches: int, virtual_stages: int = 1) -> float:
    """Bubble time over ideal compute time, Narayanan et al. 2021 Sections 2.2.1-2.2.2:
    (p - 1) / m, and (p - 1) / (v m) for the interleaved schedule."""
    return (pp - 1) / (virtual_stages * micro_batches)


def elementwise_elements_per_token(spec: ModelSpec, tp: int, flash_attention: bool = True,
                                   seq_len: int | None = None,
                                   sequence_parallel: bool = False) -> float:
    """Elements one block's memory-bound forward ops read and write per token, per TP rank.
    Norms: 2 x (read h, write h); residual adds: 2 x (read 2h, write h); GELU read f, write f, or
    SwiGLU read 2f, write f, plus RoPE read/write of Q and K; softmax over a*s scores (read, write)
    when the attention matrix is materialised (no flash kernel). Sequence parallelism splits the
    norms and residual adds over the TP ranks too."""
    s = seq_len or spec.seq_len
    h, f, t = spec.hidden, spec.ffn_hidden, tp
    replicated = (4 * h + 6 * h) / (t if sequence_parallel else 1)
    if spec.gated_mlp:
        sharded = 3 * f + 2 * (h + spec.kv_hidden)
    else:
        sharded = 2 * f
    if not flash_attention:
        sharded += 2 * spec.heads * s
    return replicated + sharded / t


@dataclass(frozen=True)
class StageTime:
    """Seconds one GPU of a stage spends on one micro-batch (forward + backward, recompute included)."""

    compute_s: float
    tp_comm_s: float
    pp_comm_s: float
    host_bound: bool = False
    """Dispatching the micro-batch's ops takes the host longer than the device takes to run them."""

    @property
    def total_s(self) -> float:
        return self.compute_s + self.tp_comm_s + self.pp_comm_s


@functools.lru_cache(maxsize=8192)
def stage_micro_batch_time(spec: ModelSpec, gpu: GpuSpec, precision: Precision, *, blocks: int,
                           first: bool, last: bool, tp: int, pp: int, micro_batch: int,
                           recompute: str, tp_spans_nodes: bool, pp_spans_nodes: bool,
                           flash_attention: bool = True, seq_len: int | None = None,
                           sequence_parallel: bool = False, virtual_stages: int = 1) -> StageTime:
    """Forward + backward of one micro-batch on one GPU of a stage."""
    s = seq_len or spec.seq_len
    tokens = micro_batch * s
    passes = 1 + BACKWARD_TO_FORWARD
    act = precision.activation_bytes

    # GEMM and attention-core FLOPs, split over TP ranks
    block_fwd = block_forward_flops_per_token(spec, s)
    flops = passes * blocks * block_fwd
    if recompute == "full":
        flops += blocks * block_fwd
    elif recompute == "selective":
        flops += blocks * attention_core_flops_per_token(spec, s)
    if last:
        flops += passes * head_forward_flops_per_token(spec)
    matmul_s = tokens * flops / tp / gpu.achievable_flops_per_s

    # memory-bound ops: forward traffic, twice that in backward, once more if fully recomputed
    traffic_passes = passes + (1 if recompute == "full" else 0)
    elementwise = traffic_passes * blocks * act * elementwise_elements_per_token(
        spec, tp, flash_attention, s, sequence_parallel)
    if last:
        # cross-entropy over this rank's vocab slice: logits read, fp32 softmax written and read,
        # fp32 gradient written
        elementwise += padded_vocab(spec.vocab, tp) / tp * (act + 3 * FP32_BYTES)
    memory_s = tokens * elementwise / (gpu.hbm_gb_per_s * GB)
    ops = stage_ops_per_micro_batch(spec, blocks=blocks, first=first, last=last, recompute=recompute)
    host_s = host_time_s(ops, gpu.op_overhead_s)

    # TP: two all-reduces of [s, b, h] per block forward, two in backward, two more when recomputed;
    # the vocab-parallel embedding adds one in forward on the first stage; on the last stage the
    # column-parallel head's input gradient is one more [s, b, h] all-reduce (backward) and the
    # vocab-parallel cross-entropy three of [s, b] (max, target logit, sum of exponentials). Sequence
    # parallelism replaces each all-reduce by a reduce-scatter plus an all-gather: the same bytes.
    tp_bw = gpu.inter_node_gb_per_s if tp_spans_nodes else gpu.intra_node_gb_per_s
    alpha = gpu.collective_latency_s
    allreduces = blocks * (4 + (2 if recompute == "full" else 0)) + (1 if first else 0)
    allreduces += 1 if last else 0
    tp_s = allreduces * allreduce_time_s(tokens * spec.hidden * act, tp, tp_bw, alpha)
    if last:
        tp_s += 3 * allreduce_time_s(tokens * FP32_BYTES, tp, tp_bw, alpha)

    # PP: activations sent forward and their gradients sent back, except past the ends; each of
    # the v interleaved chunks sends its own (Narayanan et al. 2021, Section 2.2.2); SP sends s/t
    pp_bw = gpu.inter_node_gb_per_s if pp_spans_nodes else gpu.intra_node_gb_per_s
    sends = ((0 if last else 1) + (0 if first else 1)) if virtual_stages == 1 else 2 * virtual_stages
    message_bytes = tokens * spec.hidden * act / (tp if sequence_parallel else 1)
    pp_s = sends * p2p_time_s(message_bytes, pp_bw, alpha) if pp > 1 else 0.0
    compute_s = pass_time_s(matmul_s + memory_s, host_s, gpu.async_dispatch)
    return StageTime(compute_s=compute_s, tp_comm_s=tp_s, pp_comm_s=pp_s,
                     host_bound=host_s > matmul_s + memory_s)


def pipeline_time_s(stage_times: list[float], micro_batches: int, virtual_stages: int = 1) -> float:
    """1F1B with heterogeneous stages: (m - 1) * slowest + sum of all stages. Interleaved, fill and
    drain cross chunks of 1/v of a stage: (m - 1/v) * slowest + sum / v, which for equal stages is
    (m + (p - 1)/v) T (Narayanan et al. 2021, Section 2.2.2)."""
    v = virtual_stages
    return (micro_batches - 1 / v) * max(stage_times) + sum(stage_times) / v


def optimizer_time_s(params_local: float, precision: Precision, hbm_gb_per_s: float) -> float:
    """AdamW update, memory-bound: read gradient, read+write master weights, m and v, write the
    low-precision copy when there is one."""
    master = 2 * FP32_BYTES * (3 if precision.optimizer_bytes == 12 else 2)  # (master,) m, v r+w
    extra = precision.weight_bytes if precision.optimizer_bytes == 12 else 0
    return params_local * (master + precision.grad_bytes + extra) / (hbm_gb_per_s * GB)


@dataclass(frozen=True)
class StepTime:
    """Seconds of one optimizer step, by cause; total_s is their sum."""

    compute_s: float
    tp_comm_s: float
    pp_comm_s: float
    bubble_s: float
    dp_comm_s: float
    optimizer_s: float
    host_bound: bool = False
    """The slowest stage's micro-batch is bound by host dispatch, not by the device."""

    @property
    def total_s(self) -> float:
        return (self.compute_s + self.tp_comm_s + self.pp_comm_s + self.bubble_s + self.dp_comm_s
                + self.optimizer_s)

    def to_dict(self) -> dict:
        keys = ("compute_s", "tp_comm_s", "pp_comm_s", "bubble_s", "dp_comm_s", "optimizer_s")
        out = {k: getattr(self, k) for k in keys}
        out["total_s"] = self.total_s
        return out


def data_parallel_time_s(stage_params: float, precision: Precision, gpu: GpuSpec, *, dp: int,
                         zero_stage: int, dp_spans_nodes: bool) -> float:
    """Gradient reduction over dp once per step (all-reduce, or ZeRO-1/2's reduce-scatter plus
    all-gather of the updated weights: the same volume)."""
    bw = gpu.inter_node_gb_per_s if dp_spans_nodes else gpu.intra_node_gb_per_s
    alpha = gpu.collective_latency_s
    if zero_stage == 3:
        return allgather_time_s(stage_params * precision.grad_bytes, dp, bw, alpha)
    return allreduce_time_s(stage_params * precision.grad_bytes, dp, bw, alpha)


def zero3_gather_time_s(stage_params: float, precision: Precision, gpu: GpuSpec, *, dp: int,
                        dp_spans_nodes: bool) -> float:
    """ZeRO-3 per micro-batch: weights all-gathered for forward and again for backward."""
    bw = gpu.inter_node_gb_per_s if dp_spans_nodes else gpu.intra_node_gb_per_s
    return 2 * allgather_time_s(stage_params * precision.weight_bytes, dp, bw,
                                gpu.collective_latency_s)
