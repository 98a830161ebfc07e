"""A layout's step time from its pipeline stages (planner.evaluate's estimate): each distinct
stage's micro-batch priced once (step_time.stage_micro_batch_time), the 1F1B pipeline over them,
then what happens once per step under the engine: the data-parallel (or ZeRO) gradient and
parameter traffic and its overlap, the optimizer (on the GPU, or DeepSpeed's CPU Adam with the
host-link copies), FP8 weight refreshes and the engine's fixed per-step cost."""
from __future__ import annotations

import itertools

from .dp_time import overlapped_dp_time_s
from .engines import engine as engine_named
from .experts import expert_data_parallel
from .fp8 import fp8_weight_cast_bytes
from .hardware import Cluster
from .layout import Layout
from .memory import Precision, StageMemory, dense_blocks_in, linear_params_held
from .model_spec import ModelSpec
from .params import padded_vocab
from .plan_options import PlanOptions
from .step_time import (StageTime, StepTime, allgather_time_s, comm_sm_share, data_parallel_time_s,
                        optimizer_time_s, overlapped_exposed_s, pipeline_time_s,
                        stage_micro_batch_time, tied_embedding_time_s)
from .zero_time import (cpu_adam_time_s, host_link_time_s, offload_transfer_bytes, parameter_tensors,
                        zero3_exposed_s, zero3_gather_time_s, zero_host_time_s,
                        zero_micro_batch_time_s)


def step_time(spec: ModelSpec, cluster: Cluster, layout: Layout, options: PlanOptions,
              precision: Precision, stages: list[StageMemory]) -> tuple[StepTime, list[StageTime]]:
    """Step time of a layout, broken down by cause, and the per-stage micro-batch times it is made
    of (see step_time.py for the model), under options.engine."""
    gpu, gpn = cluster.gpu, cluster.gpus_per_node
    dp, pp, tp, m = layout.dp, layout.pp, layout.tp, layout.grad_accum
    eng = engine_named(options.engine)
    tp_spans = layout.spans_nodes("tp", gpn)
    pp_spans = layout.spans_nodes("pp", gpn)
    dp_spans = layout.spans_nodes("dp", gpn) or layout.spans_nodes("cp", gpn)
    ep_spans = layout.spans_nodes("ep", gpn)
    firsts = list(itertools.accumulate((st.blocks for st in stages[:-1]), initial=0))

    def stage_time(st: StageMemory, first: int) -> StageTime:
        return stage_micro_batch_time(
            spec, gpu, precision, blocks=st.blocks, first=st.stage == 0, last=st.stage == pp - 1,
            tp=tp, pp=pp, micro_batch=layout.micro_batch, recompute=layout.recompute,
            tp_spans_nodes=tp_spans, pp_spans_nodes=pp_spans, flash_attention=options.flash_attention,
            seq_len=options.seq_len, sequence_parallel=layout.sequence_parallel,
            virtual_stages=layout.virtual_stages, engine=eng, params_local=st.params, ep=layout.ep,
            ep_spans_nodes=ep_spans, capacity_factor=options.capacity_factor,
            extra_host_s=zero_host_time_s(parameter_tensors(spec, blocks=st.blocks, first=st.stage == 0,
                                                            last=st.stage == pp - 1),
                                          layout.zero_stage, eng),
            cp=layout.cp, cp_kind=layout.cp_kind, cp_spans_nodes=layout.spans_nodes("cp", gpn),
            first_block=first)

    # the middle stages of a deep pipeline are alike: each distinct one priced once
    seen: dict = {}
    per_stage = []
    for st, first in zip(stages, firsts):
        key = (st.blocks, st.stage == 0, st.stage == pp - 1, st.params,
               dense_blocks_in(spec, first, st.blocks))
        if key not in seen:
            seen[key] = stage_time(st, first)
        per_stage.append(seen[key])
    totals = [t.total_s for t in per_stage]
    slowest = per_stage[totals.index(max(totals))]
    pipeline_s = pipeline_time_s(totals, m, layout.virtual_stages)
    busy_s = m * slowest.total_s
    max_params = max(st.params for st in stages)
    max_expert = max(st.expert_params for st in stages)
    dpn = dp * layout.cp            # the ranks holding the same weights: data x context parallel
    edp = expert_data_parallel(dp, layout.ep) * layout.cp
    exposed_zero, dp_s = 0.0, 0.0
    if eng.dp_overlap in ("bucketed", "fsdp"):
        exposed_zero, dp_s = overlapped_dp_time_s(spec, gpu, layout, eng, precision, stages,
                                                  slowest.compute_s, dp_spans)
    elif layout.zero_stage == 3:
        zero_s = zero_micro_batch_time_s(max_params, precision, gpu, dp=dpn,
                                         zero_stage=layout.zero_stage, dp_spans_nodes=dp_spans)
        # gathers prefetched ahead of forward and backward, then the gradients' reduce-scatter
        # (zero3_exposed_s); the partitions stay put at the step
        gather = zero3_gather_time_s(max_params, precision, gpu, dp=dpn, dp_spans_nodes=dp_spans) / 2
        exposed_zero = m * zero3_exposed_s(gather, zero_s - 2 * gather, slowest.compute_s,
                                           comm_sm_share(gpu))
    elif layout.zero_stage == 2:
        zero_s = zero_micro_batch_time_s(max_params, precision, gpu, dp=dpn,
                                         zero_stage=layout.zero_stage, dp_spans_nodes=dp_spans)
        # each micro-batch's reduce-scatter overlaps its backward (2/3 of compute); the updated
        # weights are all-gathered after the step
        exposed_zero = m * overlapped_exposed_s(zero_s, slowest.compute_s * 2 / 3,
                                                comm_sm_share(gpu))
        dp_s = allgather_time_s(max_params * precision.weight_bytes, dpn,
                                gpu.inter_node_gb_per_s if dp_spans else gpu.intra_node_gb_per_s,
                                gpu.link_latency_s(dp_spans))
    else:
        # MoE: the routed experts' gradients reduce over dp/ep (experts.py), the rest over dp
        dp_s = data_parallel_time_s(max_params - max_expert, precision, gpu, dp=dpn,
                                    zero_stage=layout.zero_stage, dp_spans_nodes=dp_spans,
                                    grad_bytes=eng.dp_grad_bytes)
        if max_expert:
            dp_s += data_parallel_time_s(max_expert, precision, gpu, dp=edp,
                                         zero_stage=layout.zero_stage,
                                         dp_spans_nodes=layout.spans_nodes("edp", gpn),
                                         grad_bytes=eng.dp_grad_bytes)
        if pp == 1:
            # overlapped with the backward (2/3 of compute) of the last micro-batch
            dp_s = max(0.0, dp_s - slowest.compute_s * 2 / 3)
    if pp > 1 and spec.tied_embeddings:
        dp_s += tied_embedding_time_s(padded_vocab(spec.vocab, tp) // tp * spec.hidden, precision, gpu,
                                      spans_nodes=pp_spans)
    sharded = layout.zero_stage >= 1
    optimizer_params = ((max_params - max_expert) / (dpn if sharded else 1)
                        + max_expert / (edp if sharded else 1))
    if layout.offload == "none":
        optimizer_s = optimizer_time_s(optimizer_params, precision, gpu.hbm_bytes_per_s,
                                       eng.optimizer_extra_bytes)
    else:   # CPU Adam plus the host-link copies, serial (a bound: DeepSpeed overlaps some)
        optimizer_s = (cpu_adam_time_s(optimizer_params, precision, gpu.host_memory_gb_per_s)
                       + host_link_time_s(offload_transfer_bytes(optimizer_params, precision,
                                                                 layout.offload, m),
                                          gpu.host_link_gb_per_s))
    if precision.fp8:   # Transformer Engine refreshes its FP8 weight copies once per step
        linear = max(linear_params_held(spec, tp, st.blocks, st.blocks, layout.ep) for st in stages)
        optimizer_s += fp8_weight_cast_bytes(linear, eng.fp8, per_micro_batch=False) / gpu.hbm_bytes_per_s
    optimizer_s += eng.step_overhead_us * 1e-6
    shard_cast_s = 0.0
    if precision.fp8 and eng.fsdp_fp8_all_gather:
        # torchao casts each weight's shard to FP8 before each gather (forward, and the backward's
        # re-gather): fp8_weight_cast_bytes' two casts a micro-batch, on 1/n of the weights
        linear = max(linear_params_held(spec, tp, st.blocks, st.blocks, layout.ep) for st in stages)
        shard_cast_s = fp8_weight_cast_bytes(linear, eng.fp8, per_micro_batch=True) / dpn / gpu.hbm_bytes_per_s
    step = StepTime(compute_s=m * (slowest.compute_s + shard_cast_s), tp_comm_s=m * slowest.tp_comm_s,
                    pp_comm_s=m * slowest.pp_comm_s, bubble_s=pipeline_s - busy_s,
                    dp_comm_s=dp_s + exposed_zero, optimizer_s=optimizer_s,
                    host_bound=slowest.host_bound, ep_comm_s=m * slowest.ep_comm_s,
                    cp_comm_s=m * slowest.cp_comm_s)
    return step, per_stage
