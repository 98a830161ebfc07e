"""The layout search: every (dp, pp, tp, micro-batch, ZeRO stage, recompute) for N GPUs, estimated
and ranked by throughput among the layouts whose worst pipeline stage fits in memory."""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

from .flops import hardware_flops_per_token, model_flops_per_token
from .hardware import GIB, Cluster
from .layout import CP_KINDS, OFFLOAD_MODES, RECOMPUTE_MODES, Layout
from .layout_rules import (divisors, layout_reasons, offload_priced,  # noqa: F401
                           searched_cp_degrees, searched_offloads, searched_zero_stages,
                           structural_reasons)
from .memory import StageMemory, offloaded_bytes, pipeline_memory, precision_for
from .model_spec import ModelSpec
from .engines import Engine, engine as engine_named
from .experts import expert_data_parallel
from .layout_time import step_time
from .plan_options import DEFAULT_MEMORY_HEADROOM, PlanOptions  # noqa: F401  (the planner's API)
from .step_time import StepTime, bubble_fraction

# GPT-3's batch sizes in sequences of 2048 tokens by model size (Brown et al. 2020, Table 2.1).
GPT3_BATCH_BY_PARAMS = ((125e6, 256), (350e6, 256), (760e6, 256), (1.3e9, 512), (2.7e9, 512),
                        (6.7e9, 1024), (13e9, 1024), (175e9, 1536))
# Throughputs within this relative distance rank as equal; the simpler layout then wins.
THROUGHPUT_TIE = 0.01


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


def search(spec: ModelSpec, cluster: Cluster, options: PlanOptions, pins: Pins = Pins(),
           exhaustive: bool = False) -> SearchResult:
    """Evaluate every layout allowed by the pins (less those _search_shape's prunings skip, unless
    exhaustive); fitting ones ranked best first."""
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
                found, evaluated = _search_shape(spec, cluster, options, pins, eng, shape, evaluated,
                                                 exhaustive)
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
                  shape: dict, evaluated: int, exhaustive: bool = False) -> tuple[list[Candidate], int]:
    """Every micro-batch, ZeRO stage, expert degree, recompute mode, sequence parallelism on and off
    (tp > 1) and context-parallel form (the faster that fits) of one (dp, pp, tp, cp); offload tried
    where memory alone rules a DeepSpeed layout out.

    Three prunings skip layouts whose outcome is known without sizing them (exhaustive=True sizes
    every one; tests/unit/test_search_pruning.py checks both searches agree):
    - a pipeline's micro-batches too large for pp of them per step (its rule, monotone in the
      micro-batch) are tried only where no smaller one is left, to name the reason;
    - memory grows with the micro-batch (micro-batch x micro-batches in flight, min(b p, B/dp),
      and every transient term): once a (ZeRO, ep, recompute, SP) combination is over memory with
      every offload tried, its larger micro-batches are too;
    - more recompute is never faster (it adds GEMMs, kernels, ops and collectives) and ranks after
      less (rank_key): once a recompute mode fits without offload, the heavier modes of the same
      layout are dominated."""
    dp, pp, tp, cp = shape["dp"], shape["pp"], shape["tp"], shape["cp"]
    per_replica = options.global_batch // dp
    kinds = [pins.cp_kind] if pins.cp_kind or cp == 1 else list(CP_KINDS)
    sps = sequence_parallel_options(pins, eng, tp, spec.moe)
    recomputes = [pins.recompute] if pins.recompute else RECOMPUTE_MODES
    zeros = ([pins.zero_stage] if pins.zero_stage is not None
             else searched_zero_stages(options.precision, pp, dp * cp, eng))
    micro_batches = [pins.micro_batch] if pins.micro_batch else divisors(per_replica)
    if not exhaustive and pp > 1:
        enough = [b for b in micro_batches if per_replica // b >= pp]
        micro_batches = enough or micro_batches[:1]
    found = []
    for zero, ep in [(z, e) for z in zeros for e in expert_degrees(spec, dp, pins.ep)]:
        over_memory = set()     # (recompute, SP) over memory at a smaller micro-batch
        for micro_batch in micro_batches:
            grad_accum = max(1, per_replica // micro_batch)
            fitted_without_offload = set()    # SP settings a lighter recompute fits
            for recompute, sequence_parallel in [(r, sp) for r in recomputes for sp in sps]:
                if not exhaustive and (sequence_parallel in fitted_without_offload
                                       or (recompute, sequence_parallel) in over_memory):
                    continue
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
                if best.fits and best.layout.offload == "none":
                    fitted_without_offload.add(sequence_parallel)
                elif not best.fits and best.stages:
                    over_memory.add((recompute, sequence_parallel))
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
