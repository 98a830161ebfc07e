"""Data-parallel traffic that shows in a step, engine by engine (engines.Engine.dp_overlap).

Symbols: Psi the parameters of a GPU's stage, n the data-parallel group (dp x cp ranks: context-
parallel ranks hold the same weights and reduce their gradients together), m micro-batches, C one
micro-batch's compute on the stage (forward C/3, backward 2C/3: the backward computes two GEMMs for
every forward one).

- 'bucketed' (Megatron-Core 0.20, `--overlap-grad-reduce` and `--overlap-param-gather`,
  megatron/core/distributed/param_and_grad_buffer.py): gradients are reduced (reduce-scattered
  under the distributed optimizer, all-reduced without it) bucket by bucket, each bucket of
  max(40M, 1M x n) parameters (distributed_data_parallel_config.py `bucket_size`) launched as soon
  as the last micro-batch's backward has produced it; so the backward of that micro-batch hides
  all but the last bucket: exposed max(one bucket, all buckets - 2C/3). The distributed
  optimizer's updated weights are all-gathered bucket by bucket ahead of the next step's forward
  (`--overlap-param-gather`: the first micro-batch's forward waits for each bucket in turn):
  exposed max(one bucket, all - C/3). Each is a ring half, (n-1)/n of its bytes per GPU.
- 'fsdp' (FSDP2 as torchtitan runs it, FSDP1 as Composer does): every micro-batch all-gathers each
  block's bf16 weights before its forward, again before its backward (not under a pipeline, where
  torchtitan keeps them gathered), and reduce-scatters its fp32 gradients after its backward. The
  next block's gather is prefetched, so the first gather and the last reduce-scatter show, and
  whatever of the rest exceeds the compute it runs beside: exposed per micro-batch
  first + last + max(0, forward gathers - C/3) + max(0, backward gathers + reduce-scatters - 2C/3);
  the first and last are the root unit's (embedding and head, torchtitan's outermost
  fully_shard), or a block's, whichever is larger. SHARD_GRAD_OP gathers once per micro-batch.
- 'after-flush' (DeepSpeed, Megatron-LM 2021/2022, Megatron-DeepSpeed, Llama 3): layout_time.step_time
  keeps its own model (zero_time.py for DeepSpeed's ZeRO-2/3).
"""
from __future__ import annotations

from .collectives import allgather_time_s, comm_sm_share, overlapped_exposed_s
from .engines import Engine
from .experts import block_params_held, expert_data_parallel, expert_params_held
from .hardware import GpuSpec
from .layout import Layout
from .fp8 import FP8_BYTES
from .memory import Precision, StageMemory, dense_blocks_in, linear_params_held
from .model_spec import ModelSpec
from .params import embedding_params, head_params

MCORE_MIN_BUCKET_PARAMS = 40_000_000
MCORE_BUCKET_PARAMS_PER_RANK = 1_000_000


def mcore_bucket_params(dp: int) -> int:
    """Megatron-Core's default bucket: max(40M, 1M x dp) parameters."""
    return max(MCORE_MIN_BUCKET_PARAMS, MCORE_BUCKET_PARAMS_PER_RANK * dp)


def bucketed_exposed_s(total_s: float, bucket_s: float, window_s: float,
                       comm_sm_share: float = 0.0) -> float:
    """What of bucketed communication a compute window of window_s leaves exposed: the last
    bucket always, and what exceeds the window, NCCL's channels taking comm_sm_share of the SMs
    from the compute meanwhile (step_time.overlapped_exposed_s): max(bucket, exposed) (0 with
    nothing to send)."""
    if total_s <= 0:
        return 0.0
    return max(min(bucket_s, total_s), overlapped_exposed_s(total_s, window_s, comm_sm_share))


def mcore_dp_exposed_s(params: float, *, grad_bytes: int, weight_bytes: int, dp: int,
                       distributed_optimizer: bool, compute_s: float, bw_gb_per_s: float,
                       latency_s: float, comm_sm_share: float = 0.0) -> float:
    """Megatron-Core's exposed data-parallel time per step (module docstring): the gradients'
    reduce-scatter (all-reduce: twice the bytes, without the distributed optimizer) behind the last
    micro-batch's backward, the weights' all-gather behind the next forward."""
    if dp <= 1:
        return 0.0
    bucket = min(params, mcore_bucket_params(dp))

    def half(p: float, nbytes: int) -> float:
        return allgather_time_s(p * nbytes, dp, bw_gb_per_s, latency_s)

    rounds = 1 if distributed_optimizer else 2
    reduce = bucketed_exposed_s(rounds * half(params, grad_bytes), rounds * half(bucket, grad_bytes),
                                compute_s * 2 / 3, comm_sm_share)
    if not distributed_optimizer:
        return reduce
    gather = bucketed_exposed_s(half(params, weight_bytes), half(bucket, weight_bytes),
                                compute_s / 3, comm_sm_share)
    return reduce + gather


def fsdp_exposed_s(block_params: float, root_params: float, stage_params: float, *,
                   gather_bytes: int, reduce_bytes: int, dp: int, zero_stage: int,
                   reshard_after_forward: bool, compute_s: float, bw_gb_per_s: float,
                   latency_s: float, comm_sm_share: float = 0.0,
                   fp8_linear: tuple[float, float] = (0.0, 0.0),
                   experts: tuple[float, float, int] = (0.0, 0.0, 1)) -> float:
    """FSDP's exposed data-parallel time per micro-batch (module docstring). fp8_linear: (of a
    block, of the stage) the linear layers' parameters FSDP gathers in FP8 (torchao's Float8
    all-gather: 1 byte each instead of gather_bytes; the root unit stays in gather_bytes).
    experts: (of a block, of the stage) the routed experts' parameters this GPU holds and the
    expert-data-parallel degree they are sharded over (experts.expert_data_parallel: d/e; at 1
    FSDP neither gathers nor reduce-scatters them); the rest is sharded over dp."""
    block_exp, stage_exp, edp = experts

    def half(p: float, nbytes: float, n: int = dp) -> float:
        return allgather_time_s(p * nbytes, n, bw_gb_per_s, latency_s) if p and n > 1 else 0.0

    def gathered(params: float, fp8: float, exp: float) -> float:
        # the experts are linear layers: in FP8 when the linear layers are (fp8 counts them too)
        dense_fp8 = max(0.0, fp8 - exp) if fp8 else 0.0
        return (half(params - exp - dense_fp8, gather_bytes) + half(dense_fp8, FP8_BYTES)
                + half(exp, FP8_BYTES if fp8 else gather_bytes, edp))

    def reduced(params: float, exp: float) -> float:
        return half(params - exp, reduce_bytes) + half(exp, reduce_bytes, edp)

    block_fp8, stage_fp8 = fp8_linear
    gathers = gathered(stage_params, stage_fp8, stage_exp)
    reduce = reduced(stage_params, stage_exp)
    regather = gathers if zero_stage == 3 and reshard_after_forward else 0.0
    first = max(gathered(block_params, block_fp8, block_exp), half(root_params, gather_bytes))
    last = max(reduced(block_params, block_exp), half(root_params, reduce_bytes))
    return (first + last
            + max(0.0, overlapped_exposed_s(gathers - first, compute_s / 3, comm_sm_share))
            + max(0.0, overlapped_exposed_s(regather + reduce - last, compute_s * 2 / 3,
                                            comm_sm_share)))


def overlapped_dp_time_s(spec: ModelSpec, gpu: GpuSpec, layout: Layout, eng: Engine, precision: Precision,
                         stages: list[StageMemory], compute_s: float,
                         dp_spans: bool) -> tuple[float, float]:
    """(per-step exposed sharded traffic, per-step exposed reduction) of the engines that overlap
    their data-parallel traffic with compute (dp_time.py): FSDP's per-block gathers and
    reduce-scatters (FSDP, Megatron-FSDP at ZeRO-3 and SHARD_GRAD_OP), Megatron-Core's bucketed
    reduce and gather (DDP and the distributed optimizer; FSDP's NO_SHARD / DDP the same way)."""
    dpn, tp = layout.dp * layout.cp, layout.tp
    bw = gpu.inter_node_gb_per_s if dp_spans else gpu.intra_node_gb_per_s
    alpha = gpu.link_latency_s(dp_spans)
    worst = max(stages, key=lambda st: st.params)
    if layout.zero_stage >= 2:
        root = max((embedding_params(spec, tp) if st.stage == 0 else 0)
                   + (head_params(spec, tp, separate_stage=layout.pp > 1)
                      if st.stage == layout.pp - 1 else 0) for st in stages)
        reshard = layout.pp == 1
        fp8_linear = (0.0, 0.0)
        if precision.fp8 and eng.fsdp_fp8_all_gather:
            first = sum(st.blocks for st in stages[:worst.stage])
            moe = worst.blocks - dense_blocks_in(spec, first, worst.blocks)
            fp8_linear = (linear_params_held(spec, tp, 1, 1, layout.ep),
                          linear_params_held(spec, tp, worst.blocks, moe, layout.ep))
        block_experts = expert_params_held(spec, 1, tp, layout.ep) if spec.moe else 0.0
        block = block_params_held(spec, tp, layout.ep)
        experts = (block_experts, worst.expert_params,
                   expert_data_parallel(layout.dp, layout.ep) * layout.cp)
        per = fsdp_exposed_s(block, root, worst.params,
                             gather_bytes=precision.compute_weight_bytes,
                             reduce_bytes=precision.grad_bytes, dp=dpn,
                             zero_stage=layout.zero_stage, reshard_after_forward=reshard,
                             compute_s=compute_s, bw_gb_per_s=bw, latency_s=alpha,
                             comm_sm_share=comm_sm_share(gpu), fp8_linear=fp8_linear,
                             experts=experts)
        return (layout.grad_accum if reshard else 1) * per, 0.0
    reduce = mcore_dp_exposed_s(worst.params, grad_bytes=eng.dp_grad_bytes or precision.grad_bytes,
                                weight_bytes=precision.weight_bytes, dp=dpn,
                                distributed_optimizer=layout.zero_stage == 1,
                                compute_s=compute_s, bw_gb_per_s=bw, latency_s=alpha,
                                comm_sm_share=comm_sm_share(gpu))
    return 0.0, reduce
