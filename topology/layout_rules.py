"""The rules a layout must pass before and besides its memory, and what the search tries: why a
(dp, pp, tp, cp, ep) cannot be built at all, why the engine does not run its sharding, which ZeRO
stages, context-parallel degrees and offloads the search walks through (planner.py runs it)."""
from __future__ import annotations

import math

from .engines import DEFAULT_ENGINE, Engine, engine as engine_named
from .hardware import Cluster
from .layout import PIPELINE_ZERO_STAGES, ZERO_STAGES, Layout
from .model_spec import ModelSpec


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def structural_reasons(spec: ModelSpec, cluster: Cluster, dp: int, pp: int, tp: int,
                       ep: int = 1, cp: int = 1, cp_kind: str = "allgather") -> list[str]:
    """Why a (dp, pp, tp, cp, ep) cannot be built at all (no estimate is possible): Layout's own
    checks."""
    layout = Layout(dp=dp, pp=pp, tp=tp, ep=ep, cp=cp, cp_kind=cp_kind)
    reasons = [] if layout.world_size == cluster.gpus else [f"{layout.product} != {cluster.gpus} GPUs"]
    return reasons + layout.model_reasons(spec)


def engine_reasons(layout: Layout, eng: Engine) -> list[str]:
    """Why the engine does not run this layout's sharding (the real cause, engine by engine):
    DeepSpeed's pipeline engine runs ZeRO 0 and 1 without offload; FSDP and Megatron-Core run their
    own sets (Engine.pipeline_zero_stages, zero_stages); offload is DeepSpeed's."""
    reasons = []
    if layout.zero_stage not in eng.zero_stages:
        reasons.append(f"ZeRO-{layout.zero_stage}: engine {eng.name} runs ZeRO stages "
                       f"{', '.join(map(str, eng.zero_stages))} (docs/planner.md)")
    elif layout.pp > 1 and layout.zero_stage not in eng.pipeline_zero_stages:
        reasons.append(layout.pipeline_zero_reason() if eng.name == DEFAULT_ENGINE else
                       f"ZeRO-{layout.zero_stage} with a pipeline (pp={layout.pp}): engine "
                       f"{eng.name} shards only ZeRO {', '.join(map(str, eng.pipeline_zero_stages))} "
                       "under a pipeline")
    if layout.offload != "none" and eng.zero_accounting != "deepspeed":
        reasons.append(f"offload {layout.offload}: DeepSpeed's ZeRO-Offload; engine {eng.name} "
                       "is priced without it")
    elif layout.pp > 1 and layout.offload != "none":
        reasons.append(layout.pipeline_zero_reason())
    return reasons


def layout_reasons(spec: ModelSpec, cluster: Cluster, layout: Layout, global_batch: int,
                   eng: Engine | None = None) -> list[str]:
    """Why an estimable layout is still ruled out (besides memory)."""
    reasons = []
    if layout.spans_nodes("tp", cluster.gpus_per_node):
        reasons.append(f"TP would straddle nodes (tp={layout.tp}, {cluster.gpus_per_node} GPUs per node)")
    reasons += engine_reasons(layout, eng or engine_named(DEFAULT_ENGINE))
    if layout.offload != "none" and not offload_priced(cluster):
        reasons.append(f"offload on {cluster.gpu.name}: the catalog has no host link or host memory "
                       "bandwidth (host_link_gb_per_s, host_memory_gb_per_s) to price it")
    if layout.global_batch != global_batch:
        reasons.append(f"micro_batch*grad_accum*dp = {layout.micro_batch}*{layout.grad_accum}*"
                       f"{layout.dp} = {layout.global_batch} != global batch {global_batch}")
    if layout.pp > 1 and layout.grad_accum < layout.pp:
        reasons.append(f"fewer micro-batches ({layout.grad_accum}) than pipeline stages ({layout.pp})")
    if layout.virtual_stages > 1 and layout.grad_accum % layout.pp:
        # Megatron-LM's interleaved schedule runs micro-batches in groups of pp (and asserts it)
        reasons.append(f"interleaved 1F1B needs micro-batches ({layout.grad_accum}) divisible by "
                       f"pp={layout.pp}")
    return reasons


def searched_zero_stages(precision: str, pp: int = 1, dp: int = 1,
                         eng: Engine | None = None) -> tuple[int, ...]:
    """ZeRO stages the search tries. For DeepSpeed, those llmlaunch can run (Layout.runnable): with
    a pipeline (pp > 1) ZeRO 0 and 1, at pp = 1 (DeepSpeed's plain engine) ZeRO 0-3. In bf16 not
    ZeRO-0: DeepSpeed accumulates bf16 gradients in fp32 only through ZeRO-1's BF16_Optimizer path
    (ZeRO-0 with fp32 accumulation raises "unsupported mix"; launcher/ds_config.py refuses it), and
    at dp = 1 ZeRO-1 holds exactly what ZeRO-0 would. ZeRO-2/3 only where dp > 1: at dp = 1 they
    partition nothing and only add DeepSpeed's per-micro-batch reductions. Another engine: the
    stages it runs (Engine.zero_stages, under a pipeline Engine.pipeline_zero_stages), sharded ones
    only where dp > 1."""
    if eng is not None and eng.name != DEFAULT_ENGINE:
        stages = eng.pipeline_zero_stages if pp > 1 else eng.zero_stages
        return tuple(z for z in stages if z in eng.zero_stages and (z == 0 or dp > 1)
                     or z == min(eng.zero_stages))
    stages = PIPELINE_ZERO_STAGES if pp > 1 or dp == 1 else ZERO_STAGES
    return tuple(z for z in stages if not (precision in ("bf16", "fp8", "bf16-megatron") and z == 0))


CP_MIN_TOKENS_PER_RANK = 4096
"""The search tries context parallelism only where each rank keeps at least this many tokens of a
sequence (8k sequences: cp 1 and 2; 128k: up to 32): a search bound, not a modelled figure (every
cp can be pinned); below it the attention core is a small share of the work and the KV exchange
per layer costs more than it saves."""


def searched_cp_degrees(spec: ModelSpec, ranks: int, pinned: int | None = None) -> list[int]:
    """Context-parallel degrees the search tries among `ranks` GPUs (those left after tp): the pin,
    or every divisor c with 2c dividing the sequence and s/c >= CP_MIN_TOKENS_PER_RANK (and 1)."""
    if pinned is not None:
        return [pinned] if ranks % pinned == 0 else []
    return [c for c in divisors(ranks) if c == 1 or (spec.seq_len % (2 * c) == 0
                                                      and spec.seq_len // c >= CP_MIN_TOKENS_PER_RANK)]


def offload_priced(cluster: Cluster) -> bool:
    """The catalog gives what ZeRO-Offload's time needs: the host link for its copies and the host
    memory bandwidth for DeepSpeed's CPU Adam."""
    return bool(cluster.gpu.host_link_gb_per_s and cluster.gpu.host_memory_gb_per_s)


def searched_offloads(zero_stage: int, cluster: Cluster) -> tuple[str, ...]:
    """Offload modes the search tries for a layout that does not fit without one (cheapest first):
    at ZeRO-2 the optimizer, at ZeRO-3 the optimizer, then also the parameters; none where the
    catalog has no host link figure to price the copies. (ZeRO-1's bf16 path, BF16_Optimizer, has
    no offload; ZeRO-2 offload holds less than ZeRO-1 offload would.)"""
    if not offload_priced(cluster):
        return ()
    return {2: ("optimizer",), 3: ("optimizer", "optimizer+params")}.get(zero_stage, ())
