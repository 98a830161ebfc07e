"""The plan as text: the report `llmlaunch plan` prints (candidates, the chosen layout's dry-run
topology, memory per stage, step-time breakdown, horizon, ruled-out layouts)."""
from __future__ import annotations

import argparse

from tabulate import tabulate

from llmlaunch.topology.cost import RunCost
from llmlaunch.topology.flops import run_model_flops, training_flops
from llmlaunch.topology.layout import AXIS_NAMES, Layout
from llmlaunch.topology.memory_legend import buffers_legend
from llmlaunch.topology.plan_inputs import PlanInputs
from llmlaunch.topology.planner import Candidate, SearchResult
from llmlaunch.topology.step_time import bubble_formula
# Rank-level listings are shown in full up to this many GPUs (--show-groups lifts it).
GROUP_LISTING_LIMIT = 16


def _fmt_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _fmt_seconds(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def candidate_rows(cands: list[Candidate]) -> list[list]:
    rows = []
    for i, c in enumerate(cands, 1):
        lay = c.layout
        zero = lay.zero_stage if lay.offload == "none" else f"{lay.zero_stage}+{lay.offload}"
        rows.append([i, lay.dp, lay.pp, lay.tp, lay.micro_batch, lay.grad_accum, zero,
                     lay.recompute, f"{c.worst_stage.total / 2**30:.1f}", f"{c.step.total_s:.3g}",
                     _fmt_count(c.tokens_per_s), f"{c.tflops_per_gpu:.1f}", f"{c.mfu:.1%}",
                     f"{c.bubble_fraction:.1%}"])
    return rows


CANDIDATE_HEADERS = ["#", "dp", "pp", "tp", "mb", "accum", "zero", "recompute", "mem GiB",
                     "step s", "tokens/s", "TFLOP/s/GPU", "MFU", "bubble"]


def plan_text(inputs: PlanInputs, result: SearchResult, chosen: Candidate | None,
              horizon: RunCost | None, args: argparse.Namespace) -> str:
    spec, cluster, gpu = inputs.spec, inputs.cluster, inputs.cluster.gpu
    lines = []
    lines.append(f"model    {spec.name or spec.arch}: {inputs.params / 1e9:.2f}B parameters "
                 f"({inputs.params_source}), arch {spec.arch}")
    lines.extend(model_lines(inputs))
    lines.append(f"cluster  {cluster.gpus} x {gpu.name} in {cluster.nodes} node(s) of "
                 f"{cluster.gpus_per_node}: {gpu.memory_gib:g} GiB, {gpu.peak_tflops:g} TFLOP/s peak "
                 f"x {gpu.matmul_efficiency:g} achievable, NVLink {gpu.intra_node_gb_per_s:g} GB/s, "
                 f"network {gpu.inter_node_gb_per_s:g} GB/s per GPU")
    lines.append(f"batch    {inputs.options.global_batch} sequences x {spec.seq_len} = "
                 f"{_fmt_count(inputs.options.global_batch * spec.seq_len)} tokens per step")
    lines.append("defaults " + "; ".join(inputs.defaults))
    lines.append("")
    if result.candidates:
        shown = result.candidates[:max(1, args.top)]
        lines.append(f"{len(result.candidates)} of {result.evaluated} evaluated layouts fit; "
                     f"top {len(shown)} by estimated throughput:")
        rows, headers = candidate_rows(shown), CANDIDATE_HEADERS
        if any(c.layout.sequence_parallel for c in shown):   # SP beside the tp it splits
            rows = [row[:3] + [f"{row[3]} +SP" if c.layout.sequence_parallel else row[3]] + row[4:]
                    for c, row in zip(shown, rows)]
        if spec.moe:  # the expert-parallel degree after tp
            rows = [row[:4] + [c.layout.ep] + row[4:] for c, row in zip(shown, rows)]
            headers = headers[:4] + ["ep"] + headers[4:]
        if any(c.layout.cp > 1 for c in shown):  # the context-parallel degree after tp
            rows = [row[:4] + [c.layout.cp if c.layout.cp == 1 else
                               f"{c.layout.cp} {c.layout.cp_kind}"] + row[4:]
                    for c, row in zip(shown, rows)]
            headers = headers[:4] + ["cp"] + headers[4:]
        marked = {}
        for c, row in zip(shown, rows):   # estimate-only rows say so where they are printed
            reasons = estimate_only_reasons(c.layout, inputs)
            if reasons:
                row[0] = f"{row[0]}*"
                marked.setdefault("; ".join(reasons), []).append(row[0].rstrip("*"))
        lines.append(tabulate(rows, headers=headers, tablefmt="simple"))
        for reasons, numbers in marked.items():
            lines.append(f"* estimate only (--emit refuses it): {reasons} (#{', #'.join(numbers)})")
        lines.append("")
    if chosen is not None and chosen.estimated:
        lines.extend(candidate_report(chosen, inputs, show_groups=args.show_groups))
    if horizon is not None:
        lines.append(f"horizon  {args.tokens:.3g} tokens: {horizon.wall_days:.1f} days on "
                     f"{cluster.gpus} GPUs, {horizon.gpu_hours:,.0f} GPU-hours, "
                     f"${horizon.cost_usd:,.0f} at ${args.usd_per_gpu_hour:g}/GPU-hour, "
                     f"{horizon.energy_mwh:,.0f} MWh at TDP x PUE {args.pue:g}, "
                     f"{horizon.flops:.3g} FLOPs executed")
        model = run_model_flops(spec, args.tokens, spec.seq_len)
        lines.append(f"         model FLOPs {model:.3g} (MFU's numerator, topology/flops.py); "
                     f"6 N D = {training_flops(inputs.active_params, args.tokens):.3g} beside it "
                     "(attention over s left out)")
        lines.append("")
    if args.show_rejected:
        ruled_out = result.rejected + result.misses
        lines.extend(rejected_report(ruled_out, limit=None) or [
            f"ruled out: none (every one of the {result.evaluated} layouts evaluated fits)", ""])
    elif not result.candidates:
        lines.extend(rejected_report(result.rejected, limit=10))
    return "\n".join(lines) + "\n"


def model_lines(inputs: PlanInputs) -> list[str]:
    """The shape under the plan's first line: dimensions, what the family adds (head dim, biases,
    QK-norm, tying, window, experts), active parameters of an MoE model, and one `approx` line per
    feature the planner approximates (topology/approximations.py)."""
    spec = inputs.spec
    out = [f"         L={spec.layers} h={spec.hidden} heads={spec.heads} kv_heads={spec.kv_heads} "
           f"ffn={spec.ffn_hidden} vocab={spec.vocab} seq_len={spec.seq_len}"]
    features = []
    if spec.head_dim * spec.heads != spec.hidden:
        features.append(f"head_dim={spec.head_dim}")
    if spec.arch != "gpt2":
        features += [name for name, on in (
            ("QKV bias", spec.qkv_bias and not spec.biases), ("biases", spec.biases),
            ("QK-norm", spec.qk_norm), ("tied embeddings", spec.tied_embeddings),
            ("parallel residual", spec.parallel_residual)) if on]
        features.append(f"{spec.norm}, {spec.mlp}, {spec.positions} positions"
                        + (f" on {spec.rotary_fraction:.0%} of d" if spec.rotary_fraction < 1 else ""))
    if spec.sliding_window:
        features.append(f"sliding window {spec.sliding_window} on {spec.windowed_layers} layers")
    if features:
        out.append("         " + "; ".join(features))
    if spec.moe:
        shared = f" + shared expert f={spec.shared_expert_ffn_hidden}" if spec.shared_expert_ffn_hidden else ""
        dense = f", first {spec.dense_layers} layers dense" if spec.dense_layers else ""
        out.append(f"experts  {spec.experts} per layer of f={spec.expert_ffn_hidden}, "
                   f"{spec.experts_per_token} per token{shared}{dense}: {inputs.active_params / 1e9:.2f}B "
                   f"of {inputs.params / 1e9:.2f}B parameters active per token (FLOPs and cost "
                   "use the active count)")
    out += [f"approx   {note}" for note in inputs.approximations]
    return out


def candidate_report(c: Candidate, inputs: PlanInputs, show_groups: bool = False) -> list[str]:
    lay, cluster = c.layout, inputs.cluster
    title = "best layout" if c.fits else "pinned layout (does NOT fit)"
    shape = f"dp={lay.dp} x pp={lay.pp} x tp={lay.tp}" + (f" x cp={lay.cp}" if lay.cp > 1 else "")
    out = [f"{title}: {shape} = {lay.world_size} GPUs, micro-batch "
           f"{lay.micro_batch} x {lay.grad_accum} accumulation x dp {lay.dp} = {lay.global_batch} "
           f"sequences, ZeRO-{lay.zero_stage}, recompute {lay.recompute}"
           + (f", offload {lay.offload}" if lay.offload != "none" else "")
           + (", sequence parallel" if lay.sequence_parallel else "")
           + (f", interleaved x{lay.virtual_stages}" if lay.virtual_stages > 1 else "")
           + (f", experts split ep={lay.ep} ({inputs.spec.experts // lay.ep} of "
              f"{inputs.spec.experts} per GPU)" if inputs.spec.moe else "")
           + (f", context parallel ({lay.cp_kind})" if lay.cp > 1 else "")
           + f", engine {inputs.options.engine}, {inputs.options.precision}"]
    for reason in c.reasons:
        out.append(f"  ruled out: {reason}")
    for reason in estimate_only_reasons(lay, inputs):
        out.append(f"  estimate only: {reason}")
    out.append("")
    out.extend(topology_report(lay, cluster.gpus_per_node, show_groups))
    out.append("")
    legend = buffers_legend(inputs.options.engine, inputs.options.precision, lay.zero_stage, lay.dp,
                            lay.pp)
    out.append(f"memory per GPU by pipeline stage (GiB; capacity {cluster.gpu.memory_gib:g}; {legend}):")
    rows = []
    stages = c.stages if len(c.stages) <= 12 else [*c.stages[:6], None, *c.stages[-5:]]
    for st in stages:
        if st is None:
            rows.append(["..."] + [""] * 8)
            continue
        g = st.to_gib()
        rows.append([st.stage, st.blocks, f"{g['weights']:.2f}", f"{g['gradients']:.2f}",
                     f"{g['optimizer']:.2f}", f"{g['activations']:.2f}", f"{g['buffers']:.2f}",
                     f"{g['total']:.2f}", f"{cluster.gpu.memory_gib - g['total']:.2f}"])
    out.append(tabulate(rows, headers=["stage", "blocks", "weights", "grads", "optimizer",
                                       "activations", "buffers", "total", "headroom"], tablefmt="simple"))
    out.append("")
    step = c.step
    out.append(f"step time {_fmt_seconds(step.total_s)} (bubble fraction {c.bubble_fraction:.1%} = "
               f"{bubble_formula(lay.pp, lay.grad_accum, lay.virtual_stages)}):")
    parts = [("compute", step.compute_s), ("TP all-reduce", step.tp_comm_s),
             *([(f"CP exchange (cp={lay.cp}, {lay.cp_kind})", step.cp_comm_s)] if lay.cp > 1 else []),
             ("PP send/recv", step.pp_comm_s), ("pipeline bubble", step.bubble_s),
             ("DP gradient reduce (exposed)", step.dp_comm_s), ("optimizer step", step.optimizer_s)]
    if inputs.spec.moe:
        parts.insert(3, (f"EP all-to-all (ep={lay.ep}, capacity factor "
                         f"{inputs.options.capacity_factor:g})", step.ep_comm_s))
    out.append(tabulate([[name, _fmt_seconds(sec), f"{sec / step.total_s:.1%}"] for name, sec in parts],
                        headers=["", "time", "share"], tablefmt="simple"))
    out.append(f"throughput {_fmt_count(c.tokens_per_s)} tokens/s, {c.tflops_per_gpu:.1f} TFLOP/s per GPU "
               f"(hardware FLOPs, recompute included), MFU {c.mfu:.1%} (model FLOPs / peak)")
    if step.host_bound:
        out.append(f"host-bound: dispatching each micro-batch's ops ({cluster.gpu.op_overhead_us:g} us "
                   "each) takes longer than the GPU runs them; a larger micro-batch or fewer, fused "
                   "kernels would raise throughput")
    out.append("")
    return out


def topology_report(lay: Layout, gpus_per_node: int, show_groups: bool) -> list[str]:
    """Which ranks form each group and where they land (dry run: nothing is launched); the groups
    are the layout's own (Layout.groups), the ones the job's process groups are built from."""
    world = lay.world_size
    strides = lay.strides()
    out = ["dry-run topology (DeepSpeed PipeModelDataParallelTopology: rank = (pipe*dp + data)*tp + tensor):"
           if lay.cp == 1 else "dry-run topology (Megatron-Core's order tp-cp-dp-pp: rank = "
           "((pipe*dp + data)*cp + context)*tp + tensor):"]
    list_all = show_groups or world <= GROUP_LISTING_LIMIT
    for axis in ("tp", "cp", "pp", "dp") if lay.cp > 1 else ("tp", "pp", "dp"):
        size, stride = lay.size(axis), strides[axis]
        count = world // size
        where = "crosses nodes" if lay.spans_nodes(axis, gpus_per_node) else "inside a node"
        if size == 1:
            out.append(f"  {AXIS_NAMES[axis]:8s} groups: none ({axis}=1)")
            continue
        head = f"  {AXIS_NAMES[axis]:8s} groups: {count} of {size} ranks, stride {stride}, {where}"
        if list_all:
            out.append(head + ": " + " ".join("[" + ",".join(map(str, g)) + "]"
                                              for g in lay.groups(axis)))
        else:
            first = [stride * k for k in range(size)]
            last = [world - 1 - stride * (size - 1 - k) for k in range(size)]
            out.append(head + f": first {_short(first)} ... last {_short(last)}")
    out.extend(expert_groups_report(lay, gpus_per_node, list_all))
    nodes = max(1, world // gpus_per_node)
    shown = range(nodes) if list_all or nodes <= 8 else [0, 1, 2, None, nodes - 1]
    for node in shown:
        if node is None:
            out.append("  ...")
            continue
        lo, hi = node * gpus_per_node, min(world, (node + 1) * gpus_per_node) - 1
        coords = [lay.coords(r) for r in range(lo, hi + 1)]
        stages = sorted({c["pp"] for c in coords})
        replicas = sorted({c["dp"] for c in coords})
        out.append(f"  node {node}: ranks {lo}-{hi}, stage {_span(stages)}, data replica {_span(replicas)}")
    return out


def estimate_only_reasons(lay: Layout, inputs: PlanInputs) -> list[str]:
    """Why llmlaunch cannot run what this layout is priced as (empty: it can): another engine, FP8,
    context parallelism and the other options only the estimate has; `--emit` refuses each."""
    from llmlaunch.topology.engines import estimate_only_reason

    reasons = [r for r in (estimate_only_reason(inputs.options.engine),) if r]
    if inputs.options.precision == "fp8":
        reasons.append("FP8 GEMMs (llmlaunch's model trains in bf16 or fp32)")
    if inputs.spec.moe and not inputs.spec.runnable:
        reasons.append(f"{inputs.spec.arch}'s experts (llmlaunch's model runs the MoE families "
                       "mixtral, qwen2_moe and qwen3_moe)")
    elif inputs.spec.moe and (lay.cp > 1 or lay.sequence_parallel):
        reasons.append("experts with context or sequence parallelism (llmlaunch's model runs "
                       "experts at cp = 1 without sequence parallelism)")
    runnable = lay.not_runnable_reason()
    if runnable and (lay.cp > 1 or lay.sequence_parallel or lay.virtual_stages > 1):
        reasons.append(runnable)
    return reasons


def expert_groups_report(lay: Layout, gpus_per_node: int, list_all: bool) -> list[str]:
    """The expert-parallel groups (consecutive data-parallel ranks splitting the experts) and the
    expert-data-parallel groups (the ranks holding the same experts, reducing their gradients):
    Layout.groups('ep') and ('edp'). Nothing at ep = 1."""
    if lay.ep == 1:
        return []
    out = []
    for axis, what in (("ep", "split the experts"), ("edp", "hold the same experts")):
        size, stride, groups = lay.size(axis), lay.stride(axis), lay.groups(axis)
        where = "crosses nodes" if lay.spans_nodes(axis, gpus_per_node) else "inside a node"
        head = (f"  {AXIS_NAMES[axis]:8s} groups: {len(groups)} of {size} ranks, stride {stride}, "
                f"{where} ({what})")
        if size == 1:
            out.append(f"  {AXIS_NAMES[axis]:8s} groups: none (dp/ep=1)")
        elif list_all:
            out.append(head + ": " + " ".join("[" + ",".join(map(str, g)) + "]" for g in groups))
        else:
            out.append(head + f": first {_short(groups[0])} ... last {_short(groups[-1])}")
    return out


def _short(ranks: list[int]) -> str:
    if len(ranks) <= 6:
        return "[" + ",".join(map(str, ranks)) + "]"
    return "[" + ",".join(map(str, ranks[:3])) + ",...," + ",".join(map(str, ranks[-2:])) + "]"


def _span(values: list[int]) -> str:
    """Sorted distinct values as 'a' or 'a-b' when contiguous, else a list."""
    if values == list(range(values[0], values[-1] + 1)):
        return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return ",".join(map(str, values))


def rejected_report(rejected: list[Candidate], limit: int | None) -> list[str]:
    if not rejected:
        return []
    shown = rejected if limit is None else rejected[:limit]
    out = [f"ruled out ({len(rejected)} layouts" + ("" if limit is None or len(rejected) <= limit
                                                    else f", first {limit}; --show-rejected lists all") + "):"]
    for c in shown:
        lay = c.layout
        detail = (f" mb={lay.micro_batch} zero={lay.zero_stage} recompute={lay.recompute}"
                  if c.stages else "")
        out.append(f"  {lay.describe()}{detail}: {'; '.join(c.reasons)}")
    out.append("")
    return out
