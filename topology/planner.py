"""The layout search: every (dp, pp, tp, micro-batch, ZeRO stage, recompute) for N GPUs, estimated
and ranked by throughput among the layouts whose worst pipeline stage fits in memory."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass, field

from .flops import hardware_flops_per_token, model_flops_per_token
from .hardware import GIB, Cluster
from .layout import CP_KINDS, OFFLOAD_MODES, RECOMPUTE_MODES, Layout
from .layout_rules import (divisors, layout_reasons, offload_priced,  # noqa: F401
                           searched_cp_degrees, searched_offloads, searched_zero_stages,
                           structural_reasons)
from .memory import (Precision, StageMemory, dense_blocks_in, linear_params_held, offloaded_bytes,
                     pipeline_memory, precision_for)
from .model_spec import ModelSpec
from .dp_time import overlapped_dp_time_s
from .engines import DEFAULT_ENGINE, Engine, engine as engine_named
from .experts import DEFAULT_CAPACITY_FACTOR, expert_data_parallel
from .fp8 import fp8_weight_cast_bytes
from .params import padded_vocab
from .step_time import (StageTime, StepTime, allgather_time_s, bubble_fraction, comm_sm_share,
                        data_parallel_time_s, optimizer_time_s, overlapped_exposed_s,
                        pipeline_time_s, stage_micro_batch_time, tied_embedding_time_s)
from .zero_time import (cpu_adam_time_s, host_link_time_s, offload_transfer_bytes, parameter_tensors,
                        zero3_exposed_s, zero3_gather_time_s, zero_host_time_s,
                        zero_micro_batch_time_s)

# GPT-3's batch sizes in sequences of 2048 tokens by model size (Brown et al. 2020, Table 2.1).
GPT3_BATCH_BY_PARAMS = ((125e6, 256), (350e6, 256), (760e6, 256), (1.3e9, 512), (2.7e9, 512),
                        (6.7e9, 1024), (13e9, 1024), (175e9, 1536))
# Throughputs within this relative distance rank as equal; the simpler layout then wins.
THROUGHPUT_TIE = 0.01


# Fraction of GPU memory a fitting layout leaves free by default: none beyond what the estimate
# already holds (buffers include 5% allocator fragmentation, topology/memory.py).
DEFAULT_MEMORY_HEADROOM = 0.0


@dataclass(frozen=True)
class PlanOptions:
    """Everything besides the model and cluster that an estimate depends on."""

    global_batch: int
    """Sequences per optimizer step."""
    seq_len: int
    precision: str = "bf16"
    flash_attention: bool = True
    """Attention through a fused kernel (SDPA/flash): no s^2 activations, no softmax traffic."""
    engine: str = DEFAULT_ENGINE
    """The training engine the step is priced for (topology/engines.py): llmlaunch runs
    `deepspeed`; the published runs name theirs."""
    capacity_factor: float = DEFAULT_CAPACITY_FACTOR
    """MoE: expert buffers padded to this multiple of the balanced load (topology/experts.py)."""
    memory_headroom: float = DEFAULT_MEMORY_HEADROOM
    """Fraction of each GPU's memory a layout must leave free to fit (plan --memory-headroom)."""
    optimizer: str = "adamw"
    """train.optimizer, whose states the memory counts (topology/optimizer_states.py)."""


@dataclass
class Candidate:
    """One evaluated layout: its memory per stage, step time, throughput and verdict."""

    layout: Layout
    fits: bool = False
    reasons: list = field(default_factory=list)
    stages: list = field(default_factory=list)  # StageMemory per pipeline stage
    step: StepTime | None = None
    stage_times: list = field(default_factory=list)
    """StageTime per pipeline stage: one micro-batch's forward + backward, what the step time and
    the drawn 1F1B schedule (schedule.py) are made of."""
    bubble_fraction: float = 0.0
    tokens_per_s: float = 0.0
    tflops_per_gpu: float = 0.0
    mfu: float = 0.0

    @functools.cached_property
    def worst_stage(self) -> StageMemory | None:
        """The stage holding the most (read once the stages are set: evaluate sets them once)."""
        return max(self.stages, key=lambda m: m.total) if self.stages else None

    @property
    def estimated(self) -> bool:
        return self.step is not None

    def to_dict(self) -> dict:
        """The public JSON shape of a candidate (see docs/plan-json.md)."""
        lay = self.layout
        out = {"dp": lay.dp, "pp": lay.pp, "tp": lay.tp, "cp": lay.cp, "cp_kind": lay.cp_kind,
               "ep": lay.ep, "micro_batch": lay.micro_batch,
               "grad_accum": lay.grad_accum, "global_batch": lay.global_batch,
               "zero_stage": lay.zero_stage, "offload": lay.offload, "recompute": lay.recompute,
               "sequence_parallel": lay.sequence_parallel, "virtual_stages": lay.virtual_stages,
               "fits": self.fits}
        if self.estimated:
            out.update({
                "memory_gib": self.worst_stage.to_gib(),
                "bubble_fraction": self.bubble_fraction,
                "step_time_s": self.step.total_s,
                "tokens_per_s": self.tokens_per_s,
                "tflops_per_gpu": self.tflops_per_gpu,
                "mfu": self.mfu,
                "step_time_breakdown_s": self.step.to_dict(),
                "host_bound": self.step.host_bound,
                "stages": [{"stage": m.stage, "blocks": m.blocks, "params": m.params,
                            "memory_gib": m.to_gib()} for m in self.stages],
            })
        out["reasons"] = list(self.reasons)
        return out


def default_global_batch(params: float, seq_len: int, gpus: int, gpus_per_node: int) -> int:
    """GPT-3's batch for the model size (Table 2.1, scaled to seq_len at equal tokens), raised to
    gpus / gpus_per_node when smaller, so that every GPU gets work under some layout (a pipeline
    needs dp * pp <= batch, and dp * pp >= gpus / gpus_per_node with TP inside a node)."""
    batch_2048 = GPT3_BATCH_BY_PARAMS[0][1]
    for size, batch in GPT3_BATCH_BY_PARAMS:
        if params >= size * 0.95:
            batch_2048 = batch
    batch = max(1, round(batch_2048 * 2048 / seq_len))
    return max(batch, math.ceil(gpus / gpus_per_node))


def evaluate(spec: ModelSpec, cluster: Cluster, layout: Layout, options: PlanOptions,
             estimate_rejected: bool = True) -> Candidate:
    """Estimate one layout: memory of every stage, step time, throughput; `fits` when nothing rules
    it out and the worst stage fits the GPU. With estimate_rejected=False a layout that a rule or
    its memory rules out is returned without a step time (the search does this to save time: what
    it reports of a rejected layout is its reasons and memory)."""
    cand = Candidate(layout=layout)
    cand.reasons = list(_structural_reasons(spec, cluster, layout.dp, layout.pp, layout.tp,
                                            layout.ep, layout.cp, layout.cp_kind))
    if cand.reasons:
        return cand
    eng = engine_named(options.engine)
    cand.reasons = layout_reasons(spec, cluster, layout, options.global_batch, eng)
    if cand.reasons and not estimate_rejected:
        return cand
    if layout.offload != "none" and not offload_priced(cluster):
        return cand    # no figure to price the offload with: not estimable (its reason says so)
    precision = dataclasses.replace(precision_for(options.precision, eng),
                                    optimizer=options.optimizer)
    gpu = cluster.gpu
    cand.stages = pipeline_memory(
        spec, dp=layout.dp, pp=layout.pp, tp=layout.tp, micro_batch=layout.micro_batch,
        micro_batches=layout.grad_accum, zero_stage=layout.zero_stage, recompute=layout.recompute,
        precision=precision, framework_bytes=gpu.framework_gib * GIB,
        flash_attention=options.flash_attention, seq_len=options.seq_len,
        sequence_parallel=layout.sequence_parallel, virtual_stages=layout.virtual_stages,
        ep=layout.ep, offload=layout.offload, engine=eng, cp=layout.cp)
    if layout.offload != "none":
        edp = expert_data_parallel(layout.dp, layout.ep)
        host = max(offloaded_bytes(st.params - st.expert_params, layout.dp, precision, layout.offload)
                   + offloaded_bytes(st.expert_params, edp, precision, layout.offload)
                   for st in cand.stages)
        if host > gpu.host_memory_gib * GIB:
            cand.reasons.append(f"offloaded states over CPU memory: {host / GIB:.1f} GiB per GPU "
                                f"of {gpu.host_memory_gib:g} GiB")
    usable = gpu.memory_bytes * (1 - options.memory_headroom)
    over = cand.worst_stage.total - usable
    if over > 0:
        capacity = (f"{usable / GIB:.3g} GiB usable: {gpu.memory_gib:g} less "
                    f"{options.memory_headroom:.0%} kept free" if options.memory_headroom
                    else f"{gpu.memory_gib:g} GiB")
        cand.reasons.append(f"worst stage (stage {cand.worst_stage.stage}) over memory by "
                            f"{over / GIB:.1f} GiB ({cand.worst_stage.total / GIB:.1f} of {capacity})")
    if cand.reasons and not estimate_rejected:
        return cand     # its memory explains it; the search does not need its time
    cand.step, cand.stage_times = step_time(spec, cluster, layout, options, precision, cand.stages)
    cand.fits = not cand.reasons
    tokens_per_step = layout.global_batch * options.seq_len
    seconds = cand.step.total_s
    cand.bubble_fraction = bubble_fraction(layout.pp, layout.grad_accum, layout.virtual_stages)
    cand.tokens_per_s = tokens_per_step / seconds
    hardware = hardware_flops_per_token(spec, layout.recompute, options.seq_len) * tokens_per_step
    model = model_flops_per_token(spec, options.seq_len) * tokens_per_step
    cand.tflops_per_gpu = hardware / seconds / cluster.gpus / 1e12
    cand.mfu = model / seconds / cluster.gpus / (gpu.peak_tflops * 1e12)
    return cand


@functools.lru_cache(maxsize=4096)
def _structural_reasons(spec: ModelSpec, cluster: Cluster, dp: int, pp: int, tp: int, ep: int,
                        cp: int, cp_kind: str) -> tuple[str, ...]:
    """structural_reasons, once per (dp, pp, tp, ep, cp): the search asks again for every
    micro-batch, ZeRO stage and recompute mode of it."""
    return tuple(structural_reasons(spec, cluster, dp, pp, tp, ep, cp, cp_kind))


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
    step = StepTime(compute_s=m * slowest.compute_s, tp_comm_s=m * slowest.tp_comm_s,
                    pp_comm_s=m * slowest.pp_comm_s, bubble_s=pipeline_s - busy_s,
                    dp_comm_s=dp_s + exposed_zero, optimizer_s=optimizer_s,
                    host_bound=slowest.host_bound, ep_comm_s=m * slowest.ep_comm_s,
                    cp_comm_s=m * slowest.cp_comm_s)
    return step, per_stage


@dataclass(frozen=True)
class Pins:
    """Dimensions the user fixed (None: searched)."""

    dp: int | None = None
    pp: int | None = None
    tp: int | None = None
    micro_batch: int | None = None
    zero_stage: int | None = None
    recompute: str | None = None
    sequence_parallel: bool = False
    """Estimator-only options (never searched: llmlaunch cannot run them), applied when pinned."""
    virtual_stages: int = 1
    ep: int | None = None
    """Expert-parallel degree (MoE); None: searched among the divisors of dp that divide E."""
    cp: int | None = None
    """Context-parallel degree; None: searched (searched_cp_degrees)."""
    cp_kind: str | None = None
    """Context parallelism's form (CP_KINDS); None: the faster of the two that fits."""


@dataclass
class SearchResult:
    candidates: list  # fitting candidates, best first
    rejected: list  # candidates ruled out, with reasons (the closest one per shape that has none fitting)
    evaluated: int
    misses: list = field(default_factory=list)
    """Layouts ruled out inside shapes where another fits (other micro-batch, ZeRO or recompute):
    what --show-rejected lists beside `rejected`."""


def _simplicity(c: Candidate) -> tuple:
    """Fewer model-parallel ranks first, then less recomputation, then no more sharding than ZeRO-1
    (ZeRO-2/3 add communication and DeepSpeed code paths), then less offload, then more memory
    headroom."""
    lay = c.layout
    return (lay.tp * lay.pp, lay.pp, lay.tp, RECOMPUTE_MODES.index(lay.recompute),
            max(lay.zero_stage, 1), OFFLOAD_MODES.index(lay.offload), lay.ep, c.worst_stage.total)


def rank_key(c: Candidate) -> tuple:
    """Throughput first (in buckets of THROUGHPUT_TIE), then the simpler layout."""
    bucket = -math.floor(math.log(c.tokens_per_s) / math.log(1 + THROUGHPUT_TIE))
    return (bucket,) + _simplicity(c)


def search(spec: ModelSpec, cluster: Cluster, options: PlanOptions, pins: Pins = Pins()) -> SearchResult:
    """Evaluate every layout allowed by the pins; fitting ones ranked best first."""
    fitting, rejected, missed, evaluated = [], [], [], 0
    gpus, eng = cluster.gpus, engine_named(options.engine)
    for tp in ([pins.tp] if pins.tp else divisors(gpus)):
        for cp in (searched_cp_degrees(spec, gpus // tp, pins.cp) if gpus % tp == 0 else []):
            for pp in ([pins.pp] if pins.pp else divisors(gpus // (tp * cp))):
                dp = gpus // (tp * cp * pp)
                shape = dict(dp=dp, pp=pp, tp=tp, cp=cp, cp_kind=pins.cp_kind or "allgather")
                if pins.dp and pins.dp != dp or dp * pp * tp * cp != gpus:
                    if pins.dp and pins.tp and pins.pp:
                        cand = Candidate(layout=Layout(**dict(shape, dp=pins.dp)))
                        cand.reasons = structural_reasons(spec, cluster, pins.dp, pp, tp, 1, cp,
                                                          shape["cp_kind"])
                        rejected.append(cand)
                    continue
                reasons = structural_reasons(spec, cluster, dp, pp, tp, 1, cp, shape["cp_kind"])
                if not reasons and tp > cluster.gpus_per_node:
                    reasons = [f"TP would straddle nodes (tp={tp} > {cluster.gpus_per_node} GPUs per node)"]
                if not reasons and options.global_batch % dp:
                    reasons = [f"global batch {options.global_batch} not divisible by dp={dp}"]
                if not reasons and pins.ep and dp % pins.ep:
                    reasons = [f"ep={pins.ep} does not divide dp={dp}"]
                if reasons:
                    rejected.append(Candidate(layout=Layout(**shape), reasons=reasons))
                    continue
                found, evaluated = _search_shape(spec, cluster, options, pins, eng, shape, evaluated)
                fitting += [c for c in found if c.fits]
                misses = [c for c in found if not c.fits]
                if misses and not any(c.fits for c in found):
                    best = misses[0]
                    for cand in misses[1:]:
                        best = cand if _closer(cand, best) else best
                    rejected.append(best)
                elif misses:
                    missed += misses
    fitting.sort(key=rank_key)
    return SearchResult(candidates=fitting, rejected=rejected, evaluated=evaluated, misses=missed)


def _search_shape(spec: ModelSpec, cluster: Cluster, options: PlanOptions, pins: Pins, eng: Engine,
                  shape: dict, evaluated: int) -> tuple[list[Candidate], int]:
    """Every micro-batch, ZeRO stage, expert degree, recompute mode, sequence parallelism on and off
    (tp > 1) and context-parallel form (the faster that fits) of one (dp, pp, tp, cp); offload tried where memory alone rules a
    DeepSpeed layout out."""
    dp, pp, tp, cp = shape["dp"], shape["pp"], shape["tp"], shape["cp"]
    per_replica = options.global_batch // dp
    kinds = [pins.cp_kind] if pins.cp_kind or cp == 1 else list(CP_KINDS)
    sps = sequence_parallel_options(pins, eng, tp, spec.moe)
    recomputes = [pins.recompute] if pins.recompute else RECOMPUTE_MODES
    zeros = ([pins.zero_stage] if pins.zero_stage is not None
             else searched_zero_stages(options.precision, pp, dp * cp, eng))
    found = []
    for micro_batch in ([pins.micro_batch] if pins.micro_batch else divisors(per_replica)):
        grad_accum = max(1, per_replica // micro_batch)
        for zero, ep in [(z, e) for z in zeros for e in expert_degrees(spec, dp, pins.ep)]:
            for recompute, sequence_parallel in [(r, sp) for r in recomputes for sp in sps]:
                best = None
                for kind in kinds:
                    layout = Layout(dp=dp, pp=pp, tp=tp, micro_batch=micro_batch,
                                    grad_accum=grad_accum, zero_stage=zero, recompute=recompute,
                                    sequence_parallel=sequence_parallel,
                                    virtual_stages=pins.virtual_stages if pp > 1 else 1, ep=ep,
                                    cp=cp, cp_kind=kind or "allgather")
                    cand = evaluate(spec, cluster, layout, options, estimate_rejected=False)
                    evaluated += 1
                    # offload only where memory alone rules the layout out (it was estimated)
                    offloads = (searched_offloads(zero, cluster)
                                if pp == 1 and not cand.fits and cand.stages
                                and eng.zero_accounting == "deepspeed"
                                and options.optimizer == "adamw" else ())   # DeepSpeed's CPU Adam
                    for offload in offloads:
                        moved = evaluate(spec, cluster, dataclasses.replace(layout, offload=offload),
                                         options, estimate_rejected=False)
                        evaluated += 1
                        if moved.fits or offload == offloads[-1]:
                            cand = moved
                            break
                    if best is None or _better_kind(cand, best):
                        best = cand
                found.append(best)
    return found, evaluated


def sequence_parallel_options(pins: Pins, eng: Engine, tp: int, moe: bool = False) -> list[bool]:
    """Sequence parallelism the search tries at this tp: pinned or the engine's default (Megatron-
    Core's recipes always run it with TP); otherwise, with TP, both, each a candidate of its own
    (DeepSpeed with llmlaunch's model runs it), except for an MoE model on the engine llmlaunch
    runs, whose experts it runs without sequence parallelism (pin it to price it)."""
    if tp == 1:
        return [False]
    if pins.sequence_parallel or eng.sequence_parallel_default:
        return [True]
    if moe and eng.runnable:
        return [False]
    return [False, True]


def _better_kind(a: Candidate, b: Candidate) -> bool:
    """Of one layout in two context-parallel forms: the one that fits, then the faster."""
    return (a.fits, a.tokens_per_s) > (b.fits, b.tokens_per_s)


def expert_degrees(spec: ModelSpec, dp: int, pinned: int | None = None) -> list[int]:
    """Expert-parallel degrees the search tries at this dp: for an MoE model every divisor of dp
    that divides E, for a dense one 1; a pin that does not divide dp is tried nowhere (none)."""
    if pinned is not None:
        return [pinned] if dp % pinned == 0 else []
    if not spec.moe:
        return [1]
    return [e for e in divisors(math.gcd(dp, spec.experts))]


def _closer(a: Candidate, b: Candidate) -> bool:
    """Of two rejected variants of one (dp, pp, tp), the one to show: fewer reasons, then less
    memory (the nearest miss explains best why the layout fails)."""
    mem_a = a.worst_stage.total if a.stages else math.inf
    mem_b = b.worst_stage.total if b.stages else math.inf
    return (len(a.reasons), mem_a) < (len(b.reasons), mem_b)


def minimum_gpus(spec: ModelSpec, cluster: Cluster, options: PlanOptions, limit: int = 1 << 20) -> int | None:
    """Smallest GPU count (doubling from the given one, whole nodes) at which some layout fits with
    full recompute and micro-batch 1 (any ZeRO stage), with the batch raised as
    default_global_batch would; None when none does up to `limit`."""
    gpus = max(cluster.gpus * 2, cluster.gpus_per_node)
    while gpus <= limit:
        bigger = Cluster(gpus=gpus, gpus_per_node=cluster.gpus_per_node, gpu=cluster.gpu)
        batch = max(options.global_batch, math.ceil(gpus / cluster.gpus_per_node))
        if search(spec, bigger, dataclasses.replace(options, global_batch=batch),
                  Pins(recompute="full", micro_batch=1)).candidates:
            return gpus
        gpus *= 2
    return None
