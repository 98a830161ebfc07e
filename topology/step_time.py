"""Time of one training step: compute, tensor/pipeline/data-parallel communication, bubble, optimizer.

Model (each term a pure function below or in the module named):
  per micro-batch on a stage:  each GEMM priced at its shape after the TP split (gemms.py lists
                                 them, gemm_model.py prices them: tile and wave quantisation, a
                                 roofline against HBM)
                               + memory-bound kernels: the bytes each reads and writes / HBM
                                 bandwidth, per kernel set (kernels.py: fused Megatron kernels or
                                 llmlaunch's eager ops)
                               + TP collectives, exposed or overlapped as the engine runs them
                               + pipeline send/recv of activations and their gradients (blocking in
                                 DeepSpeed's PipelineEngine and Megatron-LM; scatter/gather in
                                 Megatron-LM, Narayanan et al. 2021 §4.1)
  1F1B pipeline:               (m - 1) * T_slowest + sum_i T_i   (fill and drain cross each stage once;
                               equal stages give (m + p - 1) T, Narayanan et al. 2021 Section 2.2)
  data parallel:               ring all-reduce of the stage's gradients after the flush when p > 1
                               (DeepSpeed's pipeline and Megatron-LM's local DDP reduce after the
                               schedule); with p = 1 it overlaps the last micro-batch's backward
  ZeRO-2/3 (pp = 1):           per micro-batch gradient reduce-scatter (ZeRO-2, overlapped with the
                               backward) or parameter all-gathers (forward, backward) and gradient
                               reduce-scatter (ZeRO-3, 3 Psi; prefetched): only what exceeds compute
                               is exposed; ZeRO-2 all-gathers the updated weights after the step
  offload:                     gradient partitions to the CPU each micro-batch, weights back after
                               the step (and before every pass with the parameters offloaded) over
                               the host link, plus CPU Adam at the host's memory bandwidth
  expert parallel (MoE):       per MoE layer and micro-batch, the all-to-alls of token routing
                               (dispatch and combine, forward and backward; experts.py) over the
                               ep group, blocking; the tokens of this rank (T/t under SP); DeepEP
                               across nodes: once per node a token reaches
  optimizer:                   AdamW is memory-bound: bytes touched per local parameter / HBM bandwidth,
                               plus the engine's fixed host time per step
The engine (engines.py) says which kernels run, whether dropout does, how sends and collectives
overlap, and what the pipeline interpreter costs the host.
Collective costs follow the ring algorithms whose bus bandwidth NCCL reports (Thakur et al. 2005):
all-reduce moves 2 (n-1)/n of the buffer per GPU, all-gather and reduce-scatter (n-1)/n. Inside a
node the bus bandwidth is the one measured for the collective's buffer size (GpuSpec.allreduce_busbw,
nccl-tests' all_reduce_perf): a 48 MiB tensor-parallel all-reduce on 8 A100s reaches 157 GB/s, not the
235 of a 16 GiB one. Without a measured curve, and across nodes, Hockney's alpha-beta cost per
message: 2 (n-1) steps for an all-reduce, n-1 for the halves, a send one; alpha is the device's
collective_latency_us. A collective overlapped with a GEMM (Megatron-LM 2022's backward) holds NCCL's
channels' SMs while it runs, which the GEMM loses (overlapped_exposed_s).

Host overhead: every framework op costs the host op_overhead_us (op_counts.py counts the ops of one
micro-batch). On a GPU the host queues kernels ahead of the device, so a micro-batch takes the longer
of host and device time; on a CPU the host is the device and the two add (He 2022, the overhead
regime).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .collectives import (GB, allgather_time_s, allreduce_time_s, bus_gb_per_s,  # noqa: F401
                          comm_sm_share, node_collective_time_s, overlapped_exposed_s, p2p_time_s)
from .context_parallel import cp_block_time_s
from .engines import DEFAULT_ENGINE, ENGINES, Engine, instructions_per_micro_batch
from .experts import (ALLTOALLS_FORWARD, DEEPEP_COMBINE_GB_PER_S, DEEPEP_DISPATCH_GB_PER_S,
                      DEFAULT_CAPACITY_FACTOR, alltoall_buffer_bytes, alltoalls_per_moe_layer,
                      deepep_internode_time_s, dispatch_tokens_per_gpu)
from .fp8 import fp8_cast_bytes_per_token, fp8_weight_cast_bytes
from .gemm_pricing import stage_gemm_times
from .gemms import ATTENTION_CORE, OP_SELECTIVE
from .hardware import GpuSpec
from .kernels import block_kernel_bytes, block_kernels, embedding_kernel_bytes, head_kernel_bytes
from .memory import FP32_BYTES, Precision, dense_blocks_in, linear_params_held
from .model_spec import ModelSpec
from .op_counts import stage_ops_per_micro_batch

# Transformer Engine's userbuffers TP overlap as Megatron-Bridge configures it for H100 (training/
# comm_overlap.py, userbuffers_bf16_h100_h8192_tp4_mbs1_seqlen8192): each sequence-parallel
# collective of a block, the GEMM (name, phase) it runs beside and the SMs it takes from it (ring
# exchanges run on the copy engines: 0).
USERBUFFERS_OVERLAP = (
    (("qkv",), "forward", 0), (("out-proj",), "forward", 24),            # AG ring, RS pipelined
    (("mlp-up", "mlp-gate"), "forward", 0), (("mlp-down",), "forward", 16),
    (("out-proj",), "backward-data", 0), (("mlp-down",), "backward-data", 0),   # AG ring
    (("qkv",), "backward-data", 4), (("mlp-up", "mlp-gate"), "backward-data", 2),  # input AG bulk
    (("qkv",), "backward-weight", 24), (("mlp-up", "mlp-gate"), "backward-weight", 4),  # dgrad RS
)


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


def bubble_formula(pp: int, micro_batches: int, virtual_stages: int = 1) -> str:
    """The formula bubble_fraction evaluates for this schedule, with its values, for printing
    beside the fraction (text report and pages: the formula printed is the one computed)."""
    if virtual_stages > 1:
        return (f"(p-1)/(v*m+p-1) with p={pp}, v={virtual_stages}, m={micro_batches} "
                "(interleaved)")
    return f"(p-1)/(m+p-1) with p={pp}, m={micro_batches}"


def bubble_ratio(pp: int, micro_batches: int, virtual_stages: int = 1) -> float:
    """Bubble time over ideal compute time, Narayanan et al. 2021 Sections 2.2.1-2.2.2:
    (p - 1) / m, and (p - 1) / (v m) for the interleaved schedule."""
    return (pp - 1) / (virtual_stages * micro_batches)


@dataclass(frozen=True)
class StageTime:
    """Seconds one GPU of a stage spends on one micro-batch (forward + backward, recompute included)."""

    compute_s: float
    tp_comm_s: float
    pp_comm_s: float
    host_bound: bool = False
    """Dispatching the micro-batch's ops takes the host longer than the device takes to run them."""
    matmul_s: float = 0.0
    """Of compute_s: the GEMMs (topology/gemm_model.py), the rest memory-bound kernels."""
    ep_comm_s: float = 0.0
    """The MoE layers' all-to-alls of token routing (expert_alltoall_time_s)."""
    cp_comm_s: float = 0.0
    """Context parallelism's exposed exchanges (context_parallel.py)."""

    @property
    def total_s(self) -> float:
        return self.compute_s + self.tp_comm_s + self.pp_comm_s + self.ep_comm_s + self.cp_comm_s


def tp_collective_time_s(*, blocks: int, first: bool, last: bool, tp: int, tokens: int,
                         hidden: int, act: int, recompute: str, sequence_parallel: bool,
                         overlap_s: tuple[float, float, float, float], gpu: GpuSpec,
                         spans_nodes: bool, overlap: bool,
                         userbuffers_s: tuple = ()) -> float:
    """Exposed tensor-parallel communication of one micro-batch (Megatron-LM's f/g pairs).

    Per block, each of T h A bytes: without SP, two all-reduces forward (after the out-projection
    and the MLP), two backward (the input gradients of QKV and MLP-in), two more forward under full
    recompute. With SP each all-reduce is a reduce-scatter plus an all-gather (the same bytes):
    forward all-gathers before QKV and MLP-in and reduce-scatters after the row-parallel GEMMs;
    backward the row-parallel layers all-gather their output gradient. With `overlap` (Megatron-LM
    2022) the column-parallel layers' backward collectives run beside GEMMs: the input-gradient
    all-reduce (SP: reduce-scatter) during the weight-gradient GEMM, and under SP the input's
    all-gather, re-run in backward, during the input-gradient GEMM; each adds what
    overlapped_exposed_s says (NCCL's SMs taken from the GEMM). overlap_s: the (QKV data, QKV
    weight, MLP-in data, MLP-in weight) backward GEMM times. Inside a node each collective is priced
    at the bus bandwidth its buffer reaches (node_collective_time_s); across nodes at
    inter_node_gb_per_s. The first stage's vocab-parallel embedding reduces its output (SP:
    reduce-scatter); the last stage's head all-reduces its input gradient and the cross-entropy
    three fp32 [T] vectors. userbuffers_s (Transformer Engine's TP overlap, sequence-parallel only):
    the (GEMM seconds, SMs taken) beside each of a block's ten collectives, USERBUFFERS_OVERLAP's
    order (4 forward, 6 backward); each adds overlapped_exposed_s at its own SM share."""
    if tp <= 1:
        return 0.0

    def collective(kind: str, nbytes: float) -> float:
        if spans_nodes:
            alpha = gpu.inter_node_latency_s
            if kind == "all-reduce":
                return allreduce_time_s(nbytes, tp, gpu.inter_node_gb_per_s, alpha)
            return allgather_time_s(nbytes, tp, gpu.inter_node_gb_per_s, alpha)
        return node_collective_time_s(kind, nbytes, tp, gpu)

    message = tokens * hidden * act
    allreduce = collective("all-reduce", message)
    half = collective("all-gather", message)       # one reduce-scatter or all-gather
    share = comm_sm_share(gpu)
    qkv_weight, mlp_weight = overlap_s[1], overlap_s[3]
    if sequence_parallel and userbuffers_s:
        exposed = [overlapped_exposed_s(half, g, sms / gpu.sm_count if gpu.sm_count else 0.0)
                   for g, sms in userbuffers_s]
        forward, backward = sum(exposed[:4]), sum(exposed[4:])
    elif sequence_parallel:
        forward = 4 * half
        backward = 2 * half
        if overlap:
            backward += sum(overlapped_exposed_s(half, g, share) for g in overlap_s)
        else:
            backward += 2 * half
    else:
        forward = 2 * allreduce
        if overlap:
            backward = (overlapped_exposed_s(allreduce, qkv_weight, share)
                        + overlapped_exposed_s(allreduce, mlp_weight, share))
        else:
            backward = 2 * allreduce
    per_block = forward + backward + (forward if recompute == "full" else 0.0)
    total = blocks * per_block
    if first:
        total += half if sequence_parallel else allreduce
    if last:
        total += (half if sequence_parallel else allreduce)
        total += 3 * collective("all-reduce", tokens * FP32_BYTES)
    return total


def pipeline_send_time_s(*, first: bool, last: bool, pp: int, tp: int, tokens: int, hidden: int,
                         act: int, virtual_stages: int, sequence_parallel: bool, engine: Engine,
                         gpu: GpuSpec, pp_spans_nodes: bool) -> float:
    """Exposed pipeline communication of one micro-batch: the activation sent forward and its
    gradient sent back, except past the ends; each of v interleaved chunks sends its own
    (Narayanan et al. 2021, Section 2.2.2). The message is T h A bytes, T h A / t under SP
    (already split). Megatron-LM's scatter/gather (§4.1) sends 1/t of it from each tensor rank and
    all-gathers it over NVLink (node_collective_time_s). Blocking engines wait for it; asynchronous ones hide it."""
    if pp <= 1 or engine.pipeline_sends == "async" or (
            engine.pipeline_sends == "async-interleaved" and virtual_stages > 1):
        return 0.0
    sends = ((0 if last else 1) + (0 if first else 1)) if virtual_stages == 1 else 2 * virtual_stages
    pp_bw = gpu.inter_node_gb_per_s if pp_spans_nodes else gpu.intra_node_gb_per_s
    alpha = gpu.link_latency_s(pp_spans_nodes)
    message = tokens * hidden * act
    if sequence_parallel:
        one = p2p_time_s(message / tp, pp_bw, alpha)
    elif engine.scatter_gather and tp > 1:
        one = (p2p_time_s(message / tp, pp_bw, alpha)
               + node_collective_time_s("all-gather", message, tp, gpu))
    else:
        one = p2p_time_s(message, pp_bw, alpha)
    return sends * one


def expert_alltoall_time_s(spec: ModelSpec, *, blocks: int, tokens: float, act: int, ep: int,
                           recompute: str, gpu: GpuSpec, spans_nodes: bool,
                           capacity_factor: float = DEFAULT_CAPACITY_FACTOR,
                           dispatcher: str = "alltoall") -> float:
    """Token routing of one micro-batch through a stage's MoE blocks (every block planned as one):
    per block alltoalls_per_moe_layer all-to-alls over the ep group, each of the buffer
    alltoall_buffer_bytes (T k h A c), of which (e-1)/e leaves the GPU: the volume per GPU of an
    all-gather of that buffer (NCCL counts an all-to-all's bus bandwidth the same way), so it is
    priced like one: inside a node at the measured bus bandwidth (node_collective_time_s), across
    nodes at inter_node_gb_per_s with (e-1) latencies (allgather_time_s). Blocking: the expert
    GEMMs wait for the dispatch, the next layer for the combine. dispatcher 'deepep' (Megatron-Core's
    flex dispatcher with DeepEP) across nodes: each dispatch and combine sends a token once per node
    it is routed to, at DeepEP's measured bandwidths (experts.deepep_internode_time_s); inside a
    node it is priced as the all-to-all."""
    if ep <= 1 or not spec.moe:
        return 0.0
    if dispatcher == "deepep" and spans_nodes:
        pair = (deepep_internode_time_s(spec, tokens * capacity_factor, act, DEEPEP_DISPATCH_GB_PER_S)
                + deepep_internode_time_s(spec, tokens * capacity_factor, act,
                                          DEEPEP_COMBINE_GB_PER_S))
        return blocks * alltoalls_per_moe_layer(recompute) / ALLTOALLS_FORWARD * pair
    nbytes = alltoall_buffer_bytes(spec, tokens, act, capacity_factor)
    if spans_nodes:
        one = allgather_time_s(nbytes, ep, gpu.inter_node_gb_per_s, gpu.inter_node_latency_s)
    else:
        one = node_collective_time_s("all-gather", nbytes, ep, gpu)
    return blocks * alltoalls_per_moe_layer(recompute) * one


def grad_accumulation_bytes(engine: Engine, precision: Precision) -> float:
    """Bytes per parameter each micro-batch's gradient accumulation moves: the engine's bf16/fp16
    path, or in fp32 autograd's in-place add into .grad (read 4 + 4, write 4)."""
    if precision.activation_bytes == FP32_BYTES:
        return 3 * FP32_BYTES
    return engine.grad_accumulation_bytes


@functools.lru_cache(maxsize=8192)
def _stage_parts(spec: ModelSpec, gpu: GpuSpec, precision: Precision, blocks: int, first: bool,
                 last: bool, tp: int, pp: int, micro_batch: int, recompute: str,
                 tp_spans_nodes: bool, pp_spans_nodes: bool, flash_attention: bool, seq_len: int,
                 sequence_parallel: bool, virtual_stages: int,
                 engine: Engine, ep: int = 1,
                 capacity_factor: float = DEFAULT_CAPACITY_FACTOR, cp: int = 1,
                 cp_kind: str = "allgather", cp_spans_nodes: bool = False,
                 dense: int = 0) -> tuple[float, float, float, float, float, float]:
    """(GEMM, memory-bound, host, TP, PP, CP) seconds of one micro-batch on one GPU of a stage
    (of cp ranks sharing each sequence: T = b s / cp tokens of it here; `dense` of its blocks an
    MoE model's first dense layers)."""
    tokens = micro_batch * seq_len / cp
    act = precision.activation_bytes
    # what recompute runs again: torchtitan's selective checkpointing is per op (gemms.py)
    again = OP_SELECTIVE if recompute == "selective" and engine.activations == "torchtitan" else recompute

    matmul_s, by_name = stage_gemm_times(spec, gpu, act, precision.fp8,
                                          engine.attention_kernel if flash_attention else "",
                                          blocks, last, micro_batch, seq_len, tp, again,
                                          flash_attention, ep, capacity_factor, cp, cp_kind, dense)

    # memory-bound kernels (kernels.py), and the FP8 casts (fp8.py)
    kernels = block_kernels(spec, kernels=engine.kernels, tp=tp, seq_len=seq_len, act=act,
                            flash_attention=flash_attention, dropout=engine.dropout,
                            sequence_parallel=sequence_parallel, score_bias=engine.score_bias)
    per_token = blocks * block_kernel_bytes(kernels, again)
    if precision.fp8:
        per_token += blocks * fp8_cast_bytes_per_token(spec, tp, sequence_parallel=sequence_parallel)
    if first:
        per_token += embedding_kernel_bytes(spec, act=act, dropout=engine.dropout)
    if last:
        per_token += head_kernel_bytes(spec, kernels=engine.kernels, tp=tp, act=act,
                                       sequence_parallel=sequence_parallel)
    memory_bytes = tokens * per_token
    if precision.fp8 and not engine.fsdp_fp8_all_gather:   # else cast on the shard: layout_time
        linear = linear_params_held(spec, tp, blocks, blocks - dense, ep)
        memory_bytes += fp8_weight_cast_bytes(linear, engine.fp8, per_micro_batch=True)
    memory_s = memory_bytes / gpu.hbm_bytes_per_s

    # host: the model's dispatched ops and, under DeepSpeed, the pipeline's instructions
    ops = stage_ops_per_micro_batch(spec, blocks=blocks, first=first, last=last, recompute=recompute)
    host_s = host_time_s(ops, gpu.op_overhead_s)
    if engine.instruction_us:
        host_s += instructions_per_micro_batch(first, last, pp) * engine.instruction_us * 1e-6

    overlap_s = tuple(by_name.get((name, phase), 0.0) for name in ("qkv", "mlp-up")
                      for phase in ("backward-data", "backward-weight"))
    userbuffers = ()
    if engine.tp_comm_overlap:
        userbuffers = tuple((sum(by_name.get((n, phase), 0.0) for n in names),
                             0 if engine.tp_overlap_on_copy_engines else sms)
                            for names, phase, sms in USERBUFFERS_OVERLAP)
    tp_s = tp_collective_time_s(blocks=blocks, first=first, last=last, tp=tp, tokens=tokens,
                                hidden=spec.hidden, act=act, recompute=recompute,
                                sequence_parallel=sequence_parallel, overlap_s=overlap_s, gpu=gpu,
                                spans_nodes=tp_spans_nodes, overlap=engine.tp_backward_overlap,
                                userbuffers_s=userbuffers)
    pp_s = pipeline_send_time_s(first=first, last=last, pp=pp, tp=tp, tokens=tokens,
                                hidden=spec.hidden, act=act, virtual_stages=virtual_stages,
                                sequence_parallel=sequence_parallel, engine=engine, gpu=gpu,
                                pp_spans_nodes=pp_spans_nodes)
    cp_s = 0.0
    if cp > 1:
        attention = [sum(t for (name, phase), t in by_name.items()
                         if name in ATTENTION_CORE and (phase == "forward") == forward)
                     for forward in (True, False)]
        cp_s = blocks * cp_block_time_s(
            spec, kind=cp_kind, micro_batch=micro_batch, seq_len=seq_len, tp=tp, cp=cp, act=act,
            recompute=recompute, collective=lambda n: group_collective_time_s(n, cp, gpu, cp_spans_nodes),
            overlap=engine.cp_overlap, attention_s=(attention[0], attention[1]))
    return matmul_s, memory_s, host_s, tp_s, pp_s, cp_s


def group_collective_time_s(nbytes: float, group: int, gpu: GpuSpec, spans_nodes: bool) -> float:
    """A ring all-gather (reduce-scatter, all-to-all: the same bytes per GPU) of nbytes over a
    group: at the measured bus bandwidth inside a node, alpha-beta on the network across nodes."""
    if spans_nodes:
        return allgather_time_s(nbytes, group, gpu.inter_node_gb_per_s, gpu.inter_node_latency_s)
    return node_collective_time_s("all-gather", nbytes, group, gpu)


def stage_micro_batch_time(spec: ModelSpec, gpu: GpuSpec, precision: Precision, *, blocks: int,
                           first: bool, last: bool, tp: int, pp: int, micro_batch: int,
                           recompute: str, tp_spans_nodes: bool, pp_spans_nodes: bool,
                           flash_attention: bool = True, seq_len: int | None = None,
                           sequence_parallel: bool = False, virtual_stages: int = 1,
                           engine: Engine = ENGINES[DEFAULT_ENGINE],
                           params_local: float = 0.0, ep: int = 1, ep_spans_nodes: bool = False,
                           capacity_factor: float = DEFAULT_CAPACITY_FACTOR,
                           extra_host_s: float = 0.0, cp: int = 1, cp_kind: str = "allgather",
                           cp_spans_nodes: bool = False, first_block: int = 0) -> StageTime:
    """Forward + backward of one micro-batch on one GPU of a stage, under `engine`; params_local,
    the stage's parameters on this GPU, prices the engine's gradient accumulation pass; ep > 1 adds
    the MoE all-to-alls (expert_alltoall_time_s), cp > 1 the context-parallel exchanges
    (context_parallel.py); extra_host_s is host time beyond the model's ops (ZeRO's hooks:
    zero_host_time_s)."""
    seq = seq_len or spec.seq_len
    matmul_s, memory_s, host_s, tp_s, pp_s, cp_s = _stage_parts(
        spec, gpu, precision, blocks, first, last, tp, pp, micro_batch, recompute, tp_spans_nodes,
        pp_spans_nodes, flash_attention, seq, sequence_parallel,
        virtual_stages, engine, ep, capacity_factor, cp, cp_kind, cp_spans_nodes,
        dense_blocks_in(spec, first_block, blocks))
    memory_s += params_local * grad_accumulation_bytes(engine, precision) / gpu.hbm_bytes_per_s
    host_s += extra_host_s
    device_s = matmul_s + memory_s
    compute_s = pass_time_s(device_s, host_s, gpu.async_dispatch)
    moe_blocks = blocks - dense_blocks_in(spec, first_block, blocks)
    ep_s = expert_alltoall_time_s(spec, blocks=moe_blocks,
                                  tokens=dispatch_tokens_per_gpu(micro_batch, seq, cp, tp,
                                                                 sequence_parallel),
                                  act=precision.activation_bytes, ep=ep, recompute=recompute,
                                  gpu=gpu, spans_nodes=ep_spans_nodes,
                                  capacity_factor=capacity_factor, dispatcher=engine.moe_dispatcher)
    return StageTime(compute_s=compute_s, tp_comm_s=tp_s, pp_comm_s=pp_s,
                     host_bound=host_s > device_s, matmul_s=matmul_s, ep_comm_s=ep_s,
                     cp_comm_s=cp_s)


def pipeline_time_s(stage_times: list[float], micro_batches: int, virtual_stages: int = 1) -> float:
    """1F1B with heterogeneous stages: (m - 1) * slowest + sum of all stages. Interleaved, fill and
    drain cross chunks of 1/v of a stage: (m - 1/v) * slowest + sum / v, which for equal stages is
    (m + (p - 1)/v) T (Narayanan et al. 2021, Section 2.2.2)."""
    v = virtual_stages
    return (micro_batches - 1 / v) * max(stage_times) + sum(stage_times) / v


def optimizer_time_s(params_local: float, precision: Precision, hbm_bytes_per_s: float,
                     extra_bytes: float = 0.0) -> float:
    """AdamW update, memory-bound: read gradient, read+write master weights, m and v, write the
    low-precision copy when there is one; plus the engine's other passes over the parameters
    (engines.Engine.optimizer_extra_bytes)."""
    master = 2 * FP32_BYTES * (3 if precision.optimizer_bytes == 12 else 2)  # (master,) m, v r+w
    low = precision.weight_bytes if precision.optimizer_bytes == 12 else 0
    return params_local * (master + precision.grad_bytes + low + extra_bytes) / hbm_bytes_per_s


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
    ep_comm_s: float = 0.0
    """MoE token routing: the all-to-alls over the expert-parallel group (0 at ep = 1)."""
    cp_comm_s: float = 0.0
    """Context parallelism: the exposed K/V or all-to-all exchanges over the cp group (0 at cp 1)."""

    @property
    def total_s(self) -> float:
        return (self.compute_s + self.tp_comm_s + self.pp_comm_s + self.bubble_s + self.dp_comm_s
                + self.optimizer_s + self.ep_comm_s + self.cp_comm_s)

    def to_dict(self) -> dict:
        keys = ("compute_s", "tp_comm_s", "pp_comm_s", "bubble_s", "dp_comm_s", "optimizer_s",
                "ep_comm_s", "cp_comm_s")
        out = {k: getattr(self, k) for k in keys}
        out["total_s"] = self.total_s
        return out


def data_parallel_time_s(stage_params: float, precision: Precision, gpu: GpuSpec, *, dp: int,
                         zero_stage: int, dp_spans_nodes: bool, grad_bytes: int = 0) -> float:
    """Gradient reduction over dp once per step (all-reduce, or ZeRO-1/2's reduce-scatter plus
    all-gather of the updated weights: the same volume), grad_bytes per element (0: the
    precision's)."""
    bw = gpu.inter_node_gb_per_s if dp_spans_nodes else gpu.intra_node_gb_per_s
    alpha = gpu.link_latency_s(dp_spans_nodes)
    nbytes = stage_params * (grad_bytes or precision.grad_bytes)
    if zero_stage == 3:
        return allgather_time_s(nbytes, dp, bw, alpha)
    return allreduce_time_s(nbytes, dp, bw, alpha)


def tied_embedding_time_s(embedding_params_local: float, precision: Precision, gpu: GpuSpec, *,
                          spans_nodes: bool) -> float:
    """gpt2 ties its head to the token table: with p > 1 the first and last stages each hold a copy
    and all-reduce its gradient between them after the flush (Megatron-LM's embedding group,
    DeepSpeed's ReduceTiedGrads): a two-rank all-reduce of this rank's slice."""
    bw = gpu.inter_node_gb_per_s if spans_nodes else gpu.intra_node_gb_per_s
    return allreduce_time_s(embedding_params_local * precision.grad_bytes, 2, bw,
                            gpu.link_latency_s(spans_nodes))
