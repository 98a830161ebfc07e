"""The sections a plan page and a run page share: summary cards, rank map, schedule, memory,
candidates, inputs."""
from __future__ import annotations

from llmlaunch.topology.hardware import GIB
from llmlaunch.topology.layout import RECOMPUTE_MODES
from llmlaunch.topology.memory_legend import buffers_legend
from llmlaunch.topology.schedule import candidate_schedule
from llmlaunch.topology.step_time import bubble_formula

from .figures import (_sig, _time_unit, breakdown_figure, memory_figure, rank_map_figure,
                      schedule_figure)
from .page import attrs, e, fig_div, kv, table
from .rank_map import rank_map
from .text import CANDIDATE_HEADERS, _fmt_count, candidate_rows

# Table rows: fitting candidates, rejected layouts.
MAX_TABLE_ROWS = 200
MAX_REJECTED_ROWS = 50

def _cards(cand, cluster, predicted: bool = False) -> str:
    lay, step = cand.layout, cand.step
    worst = cand.worst_stage
    est = "predicted " if predicted else ""
    shape = f"dp {lay.dp} × pp {lay.pp} × tp {lay.tp}" + (f" × cp {lay.cp}" if lay.cp > 1 else "")
    items = [(shape, f"{lay.world_size} GPUs"),
             (f"{lay.micro_batch} × {lay.grad_accum}", "micro-batch × micro-batches (m)"),
             (f"ZeRO-{lay.zero_stage}, {lay.recompute}", "ZeRO stage, recompute"),
             (f"{step.total_s:.4g} s", f"{est}step time"),
             (f"{_fmt_count(cand.tokens_per_s)} tokens/s", f"{est}throughput"),
             (f"{cand.tflops_per_gpu:.1f} TFLOP/s", f"{est}per GPU, MFU {cand.mfu:.1%}"),
             (f"{worst.total / GIB:.1f} GiB", f"{est}worst stage (stage {worst.stage}) of "
                                              f"{cluster.gpu.memory_gib:g} GiB"),
             (f"{cand.bubble_fraction:.1%}", "bubble " + bubble_formula(
                 cand.layout.pp, cand.layout.grad_accum, cand.layout.virtual_stages))]
    return "<div class=cards>" + "".join(f"<div class=card><b>{e(a)}</b><span>{e(b)}</span></div>"
                                         for a, b in items) + "</div>"


def _rank_map_section(cand, cluster, figures) -> tuple[str, dict]:
    lay = cand.layout
    rm = rank_map(lay, cluster.gpus_per_node)
    per = rm["nodes_per_cell"]
    axes = ("tp", "cp", "pp", "dp") if lay.cp > 1 else ("tp", "pp", "dp")
    crosses = [(axis, rm[f"{axis}_crosses_nodes"]) for axis in axes]
    words = {"tp": "TP groups", "cp": "CP groups", "pp": "PP groups", "dp": "DP groups"}
    status = "; ".join(
        (f'<span class="{"warn" if axis == "tp" and c else ""}">{words[axis]} '
         f'{"cross nodes" if c else "stay inside a node"}</span>') for axis, c in crosses)
    agg = (f"{rm['world']} ranks, one cell per GPU: {rm['nodes']} node(s) of {rm['gpus_per_node']} "
           f"GPUs, wrapped into {rm['columns']} column(s) of {rm['rows']} node rows."
           if per == 1 else
           f"{rm['world']} ranks on {rm['nodes']} nodes: each cell aggregates GPU slot g of "
           f"{per} consecutive nodes ({per} ranks), {rm['units']} node blocks in {rm['columns']} "
           f"column(s); grey cells would hold ranks of more than one stage.")
    labels = ("In-cell text: t = TP group, d = data-parallel replica; hover for details."
              if rm["labelled"] else
              "Hover a cell for its ranks, TP groups and DP replicas; drag to zoom.")
    section_attrs = attrs(ranks=rm["world"], dp=lay.dp, pp=lay.pp, tp=lay.tp, cp=lay.cp,
                          nodes=rm["nodes"],
                          gpus_per_node=rm["gpus_per_node"], nodes_per_cell=per,
                          cells=sum(v is not None for row in rm["z"] for v in row))
    rank_rule = ("Rank = (stage × dp + replica) × tp + tensor rank (DeepSpeed's topology; "
                 "topology/layout.py)." if lay.cp == 1 else
                 f"Rank = ((stage × dp + replica) × cp + context rank) × tp + tensor rank "
                 f"(Megatron-Core's order tp-cp-dp-pp; topology/layout.py); cp = {lay.cp} "
                 f"({lay.cp_kind}).")
    html_ = (f'<section id="rank-map"{section_attrs}>'
             f"<h2>Rank map</h2><p class=note>{e(agg)} Colour: pipeline stage. {e(labels)} "
             f"{rank_rule}</p>"
             f"<p class=note>{status}"
             + (f'; <span class="warn">{len(rm["tp_crossing_cells"])} cell(s) marked ✕ hold ranks '
                f"whose TP group crosses a node</span>" if rm["tp_crossing_cells"] else "")
             + "</p>" + fig_div("fig-rank-map", figures, rank_map_figure(rm)) + "</section>")
    return html_, rm


def _schedule_section(inputs, cand, figures) -> str:
    sch = candidate_schedule(cand)
    lay, step = cand.layout, cand.step
    capped = (f"Drawn: {sch.drawn} of m = {sch.micro_batches} micro-batches (capped for "
              f"readability); the real step repeats the steady state {sch.micro_batches - sch.drawn} "
              f"more times. " if sch.drawn < sch.micro_batches else
              f"All m = {sch.micro_batches} micro-batches drawn. ")
    scale, unit = _time_unit(max(sch.pipeline_s, step.total_s))
    kind = ("1F1B" if lay.virtual_stages == 1 else
            f"interleaved 1F1B, {lay.virtual_stages} model chunks per stage (each bar one chunk)")
    note = (f"{kind}, {lay.pp} stage(s) × time; numbers are micro-batch indices. Per micro-batch on "
            f"the slowest stage: forward {max(sch.fwd) * scale:.3g} {unit}, backward "
            f"{max(sch.bwd) * scale:.3g} {unit} (forward = {'1/4' if lay.recompute == 'full' else '1/3'} "
            f"of compute + TP all-reduce, plus the activation send; backward the rest, plus the "
            f"gradient send), the planner's per-stage times. Hatched: idle (pipeline bubble, "
            f"{cand.bubble_fraction:.1%} of the step). {capped}After the flush: DP gradient reduce "
            f"and optimizer step.")
    section_attrs = attrs(stages=lay.pp, micro_batches=sch.micro_batches, micro_batches_drawn=sch.drawn,
                          virtual_stages=lay.virtual_stages, ops=len(sch.ops),
                          step_s=_sig(step.total_s, 6), drawn_end_s=_sig(sch.end_s, 6))
    return (f'<section id="schedule"{section_attrs}>'
            f"<h2>Pipeline schedule (one step)</h2><p class=note>{e(note)}</p><div class=two><div>"
            + fig_div("fig-schedule", figures, schedule_figure(sch, step.total_s))
            + "</div><div><h2>Step-time breakdown</h2><p class=note>The planner's estimate for the "
              "full step (all m micro-batches, slowest stage).</p>"
            + fig_div("fig-breakdown", figures, breakdown_figure(step)) + "</div></div></section>")


def _memory_section(cand, inputs, figures) -> str:
    cluster, lay = inputs.cluster, cand.layout
    legend = buffers_legend(inputs.options.engine, inputs.options.precision, lay.zero_stage, lay.dp,
                            lay.pp)
    cap = cluster.gpu.memory_gib
    worst = cand.worst_stage
    head = cap - worst.total / GIB
    note = (f"Memory per GPU of each pipeline stage at its 1F1B peak; worst stage {worst.stage}: "
            f"{worst.total / GIB:.2f} GiB of {cap:g} GiB ({'headroom' if head >= 0 else 'OVER by'} "
            f"{abs(head):.2f} GiB). {legend[0].upper()}{legend[1:]}.")
    return (f'<section id="memory"{attrs(stages=len(cand.stages), capacity_gib=cap)}><h2>Memory per '
            f"pipeline stage</h2><p class=note>{e(note)}</p>"
            + fig_div("fig-memory", figures, memory_figure(cand.stages, cap)) + "</section>")


CANDIDATE_UNITS = {"mb": "sequences per micro-batch", "accum": "micro-batches per step (m)",
                   "zero": "ZeRO stage", "mem GiB": "worst stage, GiB per GPU",
                   "step s": "seconds per optimizer step", "tokens/s": "tokens per second",
                   "TFLOP/s/GPU": "hardware TFLOP/s per GPU", "MFU": "model FLOPs utilisation, %",
                   "bubble": "idle share of the step, %"}


def _candidates_section(result, chosen) -> str:
    cands = result.candidates
    shown = cands[:MAX_TABLE_ROWS]
    rows = []
    for c, texts in zip(shown, candidate_rows(shown)):
        lay = c.layout
        values = [None, lay.dp, lay.pp, lay.tp, lay.micro_batch, lay.grad_accum, lay.zero_stage,
                  RECOMPUTE_MODES.index(lay.recompute), c.worst_stage.total / GIB, c.step.total_s,
                  c.tokens_per_s, c.tflops_per_gpu, c.mfu, c.bubble_fraction]
        values[0] = texts[0]
        rows.append([(t, _sig(v, 6) if isinstance(v, float) else v) for t, v in zip(texts, values)])
    marks = ["chosen" if c is chosen else "" for c in shown]
    candidates_table = table(CANDIDATE_HEADERS, rows, cls="sortable", left=(7,), row_classes=marks,
                             titles=CANDIDATE_UNITS)
    if cands:
        head = (f"{len(cands)} of {result.evaluated} evaluated layouts fit"
                + (f"; the top {len(shown)} are listed" if len(shown) < len(cands) else "")
                + ". Ranked by estimated throughput (ties within 1%: the simpler layout). "
                  "Click a column to sort; the highlighted row is the layout drawn above.")
        body = f"<div class=scroll>{candidates_table}</div>"
    else:
        head = f"None of the {result.evaluated} evaluated layouts fits."
        body = ""
    rej = ""
    if result.rejected:
        rr = result.rejected[:MAX_REJECTED_ROWS]
        rows = [[c.layout.dp, c.layout.pp, c.layout.tp,
                 c.layout.micro_batch if c.stages else "", c.layout.zero_stage if c.stages else "",
                 c.layout.recompute if c.stages else "", "; ".join(c.reasons)] for c in rr]
        more = f" (first {len(rr)} of {len(result.rejected)})" if len(rr) < len(result.rejected) else ""
        rej = (f"<details><summary>Ruled-out layouts{more}</summary><div class=scroll>"
               + table(["dp", "pp", "tp", "mb", "zero", "recompute", "why"], rows, cls="sortable",
                        left=(5, 6)) + "</div></details>")
    return (f'<section id="candidates"{attrs(rows=len(shown), candidates=len(cands))}>'
            f"<h2>Candidates</h2><p class=note>{e(head)}</p>{body}{rej}</section>")


def _inputs_section(inputs, extra_pairs=()) -> str:
    spec, cl, opt, gpu = inputs.spec, inputs.cluster, inputs.options, inputs.cluster.gpu
    pins = [f"{k}={v}" for k, v in vars(inputs.pins).items() if v is not None]
    pairs = [("model", f"{spec.name or spec.arch}: {inputs.params / 1e9:.3f} B parameters "
                       f"({inputs.params_source}), arch {spec.arch}"),
             ("shape", f"layers {spec.layers}, hidden {spec.hidden}, heads {spec.heads}, kv heads "
                       f"{spec.kv_heads}, ffn {spec.ffn_hidden}, vocab {spec.vocab}, sequence "
                       f"{spec.seq_len} tokens"),
             ("cluster", f"{cl.gpus} × {gpu.name} in {cl.nodes} node(s) of {cl.gpus_per_node}"),
             ("GPU", f"{gpu.memory_gib:g} GiB, {gpu.peak_tflops:g} TFLOP/s peak × "
                     f"{gpu.matmul_efficiency:g} achievable, HBM {gpu.hbm_gb_per_s:g} GB/s, NVLink "
                     f"{gpu.intra_node_gb_per_s:g} GB/s, network {gpu.inter_node_gb_per_s:g} GB/s per "
                     f"GPU, framework {gpu.framework_gib:g} GiB"),
             ("batch", f"{opt.global_batch} sequences × {opt.seq_len} tokens = "
                       f"{opt.global_batch * opt.seq_len:,} tokens per step"),
             ("precision", f"{opt.precision}, attention "
                           f"{'flash (fused SDPA)' if opt.flash_attention else 'materialised'}"),
             ("pins", ", ".join(pins) or "none (searched)"), *extra_pairs]
    defaults = "".join(f"<li>{e(d)}</li>" for d in inputs.defaults) or "<li>none</li>"
    return (f'<section id="inputs"{attrs(defaults=len(inputs.defaults))}><h2>Inputs</h2>{kv(pairs)}'
            f"<h2 style='margin-top:10px'>Defaults the plan used</h2><ul>{defaults}</ul></section>")


def _layout_sections(inputs, cand, figures) -> tuple[list[str], dict | None]:
    if cand is None or not cand.estimated:
        return [], None
    reasons = ""
    if not cand.fits:
        reasons = ('<section id="verdict"><h2 class=warn>This layout does not fit</h2><ul>'
                   + "".join(f"<li>{e(r)}</li>" for r in cand.reasons) + "</ul></section>")
    rank_html, rm = _rank_map_section(cand, inputs.cluster, figures)
    return [reasons, rank_html, _schedule_section(inputs, cand, figures),
            _memory_section(cand, inputs, figures)], rm
