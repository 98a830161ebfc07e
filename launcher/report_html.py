"""One self-contained HTML page (or a PNG) of a plan or of a trained run.

`llmlaunch plan ... --report FILE.html` calls `write_plan_report`; `llmlaunch report RUN_DIR` calls
`write_run_report`. The page inlines everything it needs (plotly.js from the `plotly` package, the
data as one JSON block, a little CSS and JS), so it opens offline from a file. Sections:

  rank map      nodes x GPUs per node, each rank coloured by pipeline stage, hover (and, for small
                maps, in-cell text) naming its TP group and data-parallel replica; ranks whose TP
                group crosses a node boundary are marked. Beyond MAX_RANK_MAP_CELLS cells, consecutive
                nodes are aggregated into one cell per GPU slot, so 131072 GPUs stay a small page.
  schedule      1F1B of the chosen layout for one step, stages x time, from the planner's per-stage
                times (forward 1/3 and backward 2/3 of a micro-batch's compute and TP time, 1/4 and
                3/4 with full recompute; pipeline sends added where they happen), then the DP reduce
                and the optimizer step; beside it the planner's step-time breakdown.
  memory        per pipeline stage, stacked, against the GPU's capacity.
  candidates    sortable table (render.candidate_rows), rejected layouts, inputs and defaults.
  run only      loss, learning rate, grad norm, tokens/s, step time and memory over steps from
                metrics.jsonl, measured against predicted, and validate.json's table.

The DOM carries counts for tests (data-* attributes): the rank-map section has data-ranks (dp*pp*tp)
and, once drawn, data-rendered-ranks (ranks covered by the plotted cells); the schedule has
data-stages, data-micro-batches, data-micro-batches-drawn and data-rendered-stages/-micro-batches;
<body> gets data-ready="1", data-render-ms and data-errors (uncaught errors) when every plot is drawn.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_bytes_atomic
from .topology.hardware import GIB
from .topology.layout import axis_spans_nodes

# Rank-map cells (GPU slots x node rows) drawn one per rank up to this; beyond, nodes are grouped.
MAX_RANK_MAP_CELLS = 4096
# In-cell labels (TP group, DP replica) are written into the rank map up to this many ranks.
MAX_LABELLED_RANKS = 1024
# The schedule draws at most this many micro-batches, and at most this many forward+backward bars.
MAX_DRAWN_MICRO_BATCHES = 32
MAX_SCHEDULE_OPS = 3000
# Table rows: fitting candidates, rejected layouts.
MAX_TABLE_ROWS = 200
MAX_REJECTED_ROWS = 50

STAGE_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
                 "#ff9da7", "#9c755f", "#79706e")
VIRIDIS = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
           "#b5de2b", "#fde725")
MIXED_COLOUR = "#c8c8c8"
SCHEDULE_COLOURS = {"forward": "#4e79a7", "backward": "#59a14f", "bubble": "#e8e8e8",
                    "dp": "#f28e2b", "optimizer": "#b07aa1"}
MEMORY_PARTS = (("weights", "#4e79a7"), ("gradients", "#f28e2b"), ("optimizer", "#e15759"),
                ("activations", "#76b7b2"), ("buffers", "#bab0ac"))
BREAKDOWN_PARTS = (("compute_s", "compute", "#4e79a7"), ("tp_comm_s", "TP all-reduce", "#9c755f"),
                   ("pp_comm_s", "PP send/recv", "#edc948"), ("bubble_s", "pipeline bubble", "#bab0ac"),
                   ("dp_comm_s", "DP gradient reduce (exposed)", "#f28e2b"),
                   ("optimizer_s", "optimizer step", "#b07aa1"))


# ----------------------------------------------------------------------------------------------
# data: rank map, schedule, memory (pure Python, no plotting library)

def _sig(x: float, digits: int = 5) -> float:
    """x rounded to `digits` significant digits (keeps the page's JSON short)."""
    return float(f"{x:.{digits}g}")


def rank_map(dp: int, pp: int, tp: int, gpus_per_node: int) -> dict:
    """The rank map as a heatmap grid. One cell per (node, GPU slot) while the map has at most
    MAX_RANK_MAP_CELLS cells; beyond, `nodes_per_cell` consecutive nodes share a cell per GPU slot.
    Cells are node rows wrapped into columns of `rows` rows, a gap column between node columns.
    z is the pipeline stage of the cell's ranks (-1: the cell's ranks are in more than one stage),
    None for gaps. Rank = (pipe * dp + data) * tp + tensor (layout.rank_coords)."""
    world = dp * pp * tp
    gpn = max(1, min(gpus_per_node, world))
    nodes = math.ceil(world / gpn)
    per_cell = max(1, math.ceil(nodes * gpn / MAX_RANK_MAP_CELLS))
    units = math.ceil(nodes / per_cell)
    target = math.sqrt(2 * units / (gpn + 1))  # about twice as wide as tall, in cells
    columns = 1 if target <= 1 else 2 ** round(math.log2(target))
    columns = max(1, min(columns, units))
    rows = math.ceil(units / columns)
    width = columns * (gpn + 1) - 1
    ranks_per_stage = dp * tp
    tp_crosses = axis_spans_nodes("tp", dp, pp, tp, gpn)
    z = [[None] * width for _ in range(rows)]
    crossing = []  # (x, y) of cells holding a rank whose TP group spans two nodes
    for unit in range(units):
        col, row = divmod(unit, rows)
        first_node = unit * per_cell
        last_node = min(first_node + per_cell, nodes) - 1
        for g in range(gpn):
            lo = first_node * gpn + g
            if lo >= world:
                continue
            hi_node = last_node if last_node * gpn + g < world else last_node - 1
            hi = hi_node * gpn + g
            s_lo, s_hi = lo // ranks_per_stage, hi // ranks_per_stage
            x = col * (gpn + 1) + g
            z[row][x] = s_lo if s_lo == s_hi else -1
            if tp_crosses and any(_tp_group_crosses(n * gpn + g, tp, gpn)
                                  for n in range(first_node, hi_node + 1)):
                crossing.append((x, row))
    return {"dp": dp, "pp": pp, "tp": tp, "world": world, "gpus_per_node": gpn, "nodes": nodes,
            "nodes_per_cell": per_cell, "units": units, "columns": columns, "rows": rows,
            "width": width, "z": z, "tp_crossing_cells": crossing, "tp_crosses_nodes": tp_crosses,
            "pp_crosses_nodes": axis_spans_nodes("pp", dp, pp, tp, gpn),
            "dp_crosses_nodes": axis_spans_nodes("dp", dp, pp, tp, gpn),
            "labelled": per_cell == 1 and world <= MAX_LABELLED_RANKS}


def _tp_group_crosses(rank: int, tp: int, gpn: int) -> bool:
    start = rank - rank % tp
    return start // gpn != (start + tp - 1) // gpn


def stage_times(spec, cluster, layout, options, stages) -> list:
    """StageTime (one micro-batch, forward + backward) of every stage: the same call the planner's
    step_time makes (topology/planner.py)."""
    from .topology.memory import PRECISIONS
    from .topology.step_time import stage_micro_batch_time

    gpn = cluster.gpus_per_node
    dp, pp, tp = layout.dp, layout.pp, layout.tp
    tp_spans = axis_spans_nodes("tp", dp, pp, tp, gpn)
    pp_spans = axis_spans_nodes("pp", dp, pp, tp, gpn)
    return [stage_micro_batch_time(
        spec, cluster.gpu, PRECISIONS[options.precision], blocks=st.blocks, first=st.stage == 0,
        last=st.stage == pp - 1, tp=tp, pp=pp, micro_batch=layout.micro_batch,
        recompute=layout.recompute, tp_spans_nodes=tp_spans, pp_spans_nodes=pp_spans,
        flash_attention=options.flash_attention, seq_len=options.seq_len) for st in stages]


def forward_backward_times(times, recompute: str) -> tuple[list[float], list[float]]:
    """Per-stage forward and backward seconds of one micro-batch: forward 1/3 of compute and TP
    all-reduce time (1/4 with full recompute, whose backward re-runs the forward), backward the
    rest; the activation send belongs to the forward, the gradient send to the backward."""
    share = 0.25 if recompute == "full" else 1 / 3
    pp = len(times)
    fwd, bwd = [], []
    for i, t in enumerate(times):
        sends = (0 if i == pp - 1 else 1) + (0 if i == 0 else 1)
        p2p = t.pp_comm_s / sends if sends else 0.0
        work = t.compute_s + t.tp_comm_s
        fwd.append(share * work + (p2p if i < pp - 1 else 0.0))
        bwd.append((1 - share) * work + (p2p if i > 0 else 0.0))
    return fwd, bwd


def one_f_one_b(fwd: list[float], bwd: list[float], micro_batches: int) -> list[tuple]:
    """Simulate 1F1B (Narayanan et al. 2021, PipeDream-Flush): stage i runs min(p-i-1, m) warm-up
    forwards, then alternates forward and backward, then drains. A forward waits for the previous
    stage's forward of the same micro-batch, a backward for the next stage's backward. Returns
    (stage, kind 'F'/'B', micro-batch, start_s, duration_s) in execution order per stage."""
    p, m = len(fwd), micro_batches
    orders = []
    for i in range(p):
        warm = min(p - i - 1, m)
        seq = [("F", j) for j in range(warm)]
        nf = warm
        for j in range(m):
            if nf < m:
                seq.append(("F", nf))
                nf += 1
            seq.append(("B", j))
        orders.append(seq)
    end_f = [[None] * m for _ in range(p)]
    end_b = [[None] * m for _ in range(p)]
    pos, free, ops = [0] * p, [0.0] * p, []
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for i in range(p):
            while pos[i] < len(orders[i]):
                kind, j = orders[i][pos[i]]
                if kind == "F":
                    ready = 0.0 if i == 0 else end_f[i - 1][j]
                else:
                    ready = end_f[i][j] if i == p - 1 else end_b[i + 1][j]
                if ready is None:
                    break
                start = max(free[i], ready)
                dur = fwd[i] if kind == "F" else bwd[i]
                free[i] = start + dur
                (end_f if kind == "F" else end_b)[i][j] = free[i]
                ops.append((i, kind, j, start, dur))
                pos[i] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # cannot happen for the order above; guards against an endless loop
            raise RuntimeError("1F1B simulation deadlocked")
    return ops


def drawn_micro_batches(pp: int, m: int) -> int:
    """Micro-batches the schedule draws: all up to MAX_DRAWN_MICRO_BATCHES, and at most
    MAX_SCHEDULE_OPS forward+backward bars in all (deep pipelines)."""
    return max(1, min(m, MAX_DRAWN_MICRO_BATCHES, max(2, MAX_SCHEDULE_OPS // (2 * pp))))


@dataclass
class Schedule:
    stages: int
    micro_batches: int
    drawn: int
    ops: list  # (stage, kind, mb, start, dur)
    idle: list  # (stage, start, dur)
    tail: list  # (stage, kind 'dp'/'optimizer', start, dur)
    pipeline_s: float  # end of the drawn pipeline (flush)
    fwd: list
    bwd: list


def schedule(spec, cluster, cand, options) -> Schedule:
    """The drawn 1F1B schedule of a candidate, with its idle gaps and the DP reduce and optimizer
    step after the flush (their durations from the planner's StepTime)."""
    lay = cand.layout
    times = stage_times(spec, cluster, lay, options, cand.stages)
    fwd, bwd = forward_backward_times(times, lay.recompute)
    drawn = drawn_micro_batches(lay.pp, lay.grad_accum)
    ops = one_f_one_b(fwd, bwd, drawn)
    flush = max(start + dur for _, _, _, start, dur in ops)
    idle, cursor = [], [0.0] * lay.pp
    tiny = flush * 1e-6
    for stage, _, _, start, dur in sorted(ops, key=lambda o: (o[0], o[3])):
        if start - cursor[stage] > tiny:
            idle.append((stage, cursor[stage], start - cursor[stage]))
        cursor[stage] = start + dur
    for stage in range(lay.pp):
        if flush - cursor[stage] > tiny:
            idle.append((stage, cursor[stage], flush - cursor[stage]))
    tail, t = [], flush
    for kind, sec in (("dp", cand.step.dp_comm_s), ("optimizer", cand.step.optimizer_s)):
        if sec > 0:
            tail.extend((stage, kind, t, sec) for stage in range(lay.pp))
            t += sec
    return Schedule(stages=lay.pp, micro_batches=lay.grad_accum, drawn=drawn, ops=ops, idle=idle,
                    tail=tail, pipeline_s=flush, fwd=fwd, bwd=bwd)


def stage_colours(pp: int) -> list[str]:
    if pp <= len(STAGE_PALETTE):
        return list(STAGE_PALETTE[:pp])
    out = []
    for i in range(pp):
        pos = i / (pp - 1) * (len(VIRIDIS) - 1)
        k = min(int(pos), len(VIRIDIS) - 2)
        a, b, f = VIRIDIS[k], VIRIDIS[k + 1], pos - k
        rgb = [round(int(a[c:c + 2], 16) * (1 - f) + int(b[c:c + 2], 16) * f) for c in (1, 3, 5)]
        out.append("#%02x%02x%02x" % tuple(rgb))
    return out


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 1:
        return 1.0, "s"
    if seconds >= 1e-3:
        return 1e3, "ms"
    return 1e6, "µs"


# ----------------------------------------------------------------------------------------------
# plotly figures (plain dicts for plotly.js: small, and no template is embedded per figure)

FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12}


def _layout(**kw) -> dict:
    base = {"font": FONT, "margin": {"l": 60, "r": 20, "t": 30, "b": 45}, "paper_bgcolor": "white",
            "plot_bgcolor": "white", "hoverlabel": {"font": {"size": 12}}}
    base.update(kw)
    return base


def rank_map_figure(rm: dict) -> dict:
    pp = rm["pp"]
    mixed = any(v == -1 for row in rm["z"] for v in row)
    levels = ([MIXED_COLOUR] if mixed else []) + stage_colours(pp)  # z = (-1: mixed), 0 .. pp-1
    n = len(levels)
    scale = []
    for k, c in enumerate(levels):
        scale += [[k / n, c], [(k + 1) / n, c]]
    if n == 1:
        scale = [[0, levels[0]], [1, levels[0]]]
    step = max(1, math.ceil(pp / 16))
    tickvals = [s for s in range(0, pp, step)]
    ticktext = [f"stage {s}" for s in tickvals]
    if mixed:
        tickvals, ticktext = [-1] + tickvals, ["mixed"] + ticktext
    gpn, rows, per = rm["gpus_per_node"], rm["rows"], rm["nodes_per_cell"]
    xt, xl = [], []
    for col in range(rm["columns"]):
        first = col * rows * per
        last = min((col + 1) * rows * per, rm["nodes"]) - 1
        if first > last:
            continue
        xt.append(col * (gpn + 1) + (gpn - 1) / 2)
        xl.append(f"node {first}" if first == last else f"nodes {first}–{last}")
    ystep = max(1, math.ceil(rows / 16))
    yt = list(range(0, rows, ystep))
    data = [{
        "type": "heatmap", "z": rm["z"], "zmin": -1.5 if mixed else -0.5, "zmax": pp - 0.5,
        "colorscale": scale,
        "xgap": 1, "ygap": 1, "hoverongaps": False, "hoverinfo": "text", "meta": "ranks",
        "colorbar": {"title": {"text": "pipeline stage"}, "tickvals": tickvals, "ticktext": ticktext,
                     "len": 1.0, "thickness": 14},
    }]
    if rm["tp_crossing_cells"]:
        xs, ys = zip(*rm["tp_crossing_cells"])
        data.append({"type": "scatter", "mode": "markers", "x": list(xs), "y": list(ys),
                     "name": "TP group crosses a node", "hoverinfo": "skip", "showlegend": True,
                     "marker": {"symbol": "x-thin-open", "size": 9, "color": "#d62728",
                                "line": {"width": 2, "color": "#d62728"}}})
    row_px = min(40 if rm["world"] <= 64 else 26, max(9, 720 // rows))
    return {"data": data, "layout": _layout(
        height=max(230, 110 + rows * row_px), margin={"l": 70, "r": 20, "t": 60, "b": 20},
        xaxis={"tickvals": xt, "ticktext": xl, "side": "top", "showgrid": False, "zeroline": False,
               "range": [-0.5, rm["width"] - 0.5], "fixedrange": False},
        yaxis={"autorange": "reversed", "tickvals": yt,
               "ticktext": [f"+{r * per}" for r in yt],
               "title": {"text": "node offset" if per == 1 else f"node offset ({per} nodes per cell)"},
               "showgrid": False, "zeroline": False},
        legend={"orientation": "h", "x": 0, "y": -0.02, "yanchor": "top"},
        showlegend=bool(rm["tp_crossing_cells"]))}


def schedule_figure(sch: Schedule, step_total_s: float) -> dict:
    scale, unit = _time_unit(max(sch.pipeline_s, step_total_s))

    def bars(name, colour, items, kind, **extra):
        trace = {"type": "bar", "orientation": "h", "name": name, "meta": kind,
                 "y": [it[0] for it in items], "base": [_sig(it[1] * scale) for it in items],
                 "x": [_sig(it[2] * scale) for it in items], "width": 0.82,
                 "marker": {"color": colour, "line": {"width": 0.5, "color": "white"}}}
        trace.update(extra)
        return trace

    data = []
    for kind, name in (("F", "forward"), ("B", "backward")):
        items = [(s, start, dur) for s, k, _, start, dur in sch.ops if k == kind]
        mbs = [mb for _, k, mb, _, _ in sch.ops if k == kind]
        data.append(bars(name, SCHEDULE_COLOURS[name], items, name, customdata=mbs,
                         texttemplate="%{customdata}", textposition="inside",
                         insidetextanchor="middle", textfont={"color": "white", "size": 10},
                         hovertemplate=(f"stage %{{y}}<br>{name} of micro-batch %{{customdata}}<br>"
                                        f"start %{{base}} {unit}, %{{x}} {unit}<extra></extra>")))
    data.append(bars("bubble (idle)", SCHEDULE_COLOURS["bubble"], sch.idle, "bubble",
                     marker={"color": SCHEDULE_COLOURS["bubble"],
                             "pattern": {"shape": "/", "fgcolor": "#b0b0b0", "size": 6}},
                     hovertemplate=f"stage %{{y}} idle<br>start %{{base}} {unit}, %{{x}} {unit}"
                                   "<extra></extra>"))
    for kind, name in (("dp", "DP gradient reduce"), ("optimizer", "optimizer step")):
        items = [(s, start, dur) for s, k, start, dur in sch.tail if k == kind]
        if items:
            data.append(bars(name, SCHEDULE_COLOURS[kind], items, kind,
                             hovertemplate=f"stage %{{y}} {name}<br>start %{{base}} {unit}, "
                                           f"%{{x}} {unit}<extra></extra>"))
    pp = sch.stages
    ystep = max(1, math.ceil(pp / 24))
    yt = list(range(0, pp, ystep))
    return {"data": data, "layout": _layout(
        barmode="overlay", height=max(280, 150 + pp * min(28, max(8, 600 // pp))),
        xaxis={"title": {"text": f"time ({unit})"}, "zeroline": False, "showgrid": True,
               "gridcolor": "#eee"},
        yaxis={"autorange": "reversed", "tickvals": yt, "ticktext": [f"stage {s}" for s in yt],
               "zeroline": False},
        uniformtext={"mode": "hide", "minsize": 8},
        legend={"orientation": "h", "x": 0, "y": 0.01, "yref": "container", "yanchor": "bottom"},
        margin={"l": 70, "r": 20, "t": 30, "b": 85})}


def breakdown_figure(step) -> dict:
    total = step.total_s
    scale, unit = _time_unit(total)
    names = [name for _, name, _ in BREAKDOWN_PARTS]
    values = [getattr(step, key) for key, _, _ in BREAKDOWN_PARTS]
    return {"data": [{
        "type": "bar", "orientation": "h", "y": names, "x": [_sig(v * scale) for v in values],
        "marker": {"color": [c for _, _, c in BREAKDOWN_PARTS]}, "meta": "breakdown",
        "text": [f"{v * scale:.3g} {unit} ({v / total:.1%})" for v in values],
        "textposition": "auto", "cliponaxis": False,
        "hovertemplate": f"%{{y}}: %{{x}} {unit}<extra></extra>"}],
        "layout": _layout(height=330, showlegend=False, margin={"l": 190, "r": 30, "t": 30, "b": 45},
                          title={"text": f"step {total * scale:.4g} {unit}", "x": 0.02,
                                 "font": {"size": 13}},
                          xaxis={"title": {"text": f"time per step ({unit})"}, "gridcolor": "#eee"},
                          yaxis={"autorange": "reversed"})}


def memory_figure(stages, capacity_gib: float) -> dict:
    xs = [st.stage for st in stages]
    gib = [st.to_gib() for st in stages]
    data = [{"type": "bar", "name": part, "x": xs, "y": [_sig(g[part], 4) for g in gib],
             "marker": {"color": colour}, "hovertemplate": f"{part} %{{y:.2f}} GiB<extra></extra>"}
            for part, colour in MEMORY_PARTS]
    data.append({"type": "scatter", "mode": "lines", "name": f"capacity {capacity_gib:g} GiB",
                 "x": [-0.5, len(stages) - 0.5], "y": [capacity_gib, capacity_gib],
                 "line": {"color": "#222", "dash": "dash", "width": 2}, "hoverinfo": "skip"})
    data.append({"type": "scatter", "mode": "markers", "name": "total", "x": xs,
                 "y": [_sig(g["total"], 4) for g in gib], "marker": {"color": "#222", "size": 5,
                                                                     "symbol": "line-ew-open"},
                 "hovertemplate": "total %{y:.2f} GiB<extra></extra>", "showlegend": False})
    step = max(1, math.ceil(len(stages) / 32))
    return {"data": data, "layout": _layout(
        barmode="stack", height=360, hovermode="x unified",
        xaxis={"title": {"text": "pipeline stage"}, "tickvals": xs[::step], "zeroline": False},
        yaxis={"title": {"text": "memory per GPU (GiB)"}, "gridcolor": "#eee",
               "range": [0, max(capacity_gib, max(g["total"] for g in gib)) * 1.08]},
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom", "traceorder": "normal"},
        margin={"l": 60, "r": 20, "t": 40, "b": 45})}


def metric_figure(steps, values, title: str, unit: str, predicted=None, capacity=None,
                  log_y: bool = False) -> dict:
    data = [{"type": "scatter", "mode": "lines+markers" if len(steps) <= 60 else "lines",
             "name": "measured", "x": steps, "y": values, "line": {"color": "#4e79a7", "width": 2},
             "marker": {"size": 4}, "hovertemplate": f"step %{{x}}: %{{y:.4g}} {unit}<extra></extra>"}]
    lo, hi = (min(steps), max(steps)) if steps else (0, 1)
    if predicted is not None:
        data.append({"type": "scatter", "mode": "lines", "name": "predicted", "x": [lo, hi],
                     "y": [predicted, predicted], "line": {"color": "#e15759", "dash": "dash"},
                     "hovertemplate": f"predicted %{{y:.4g}} {unit}<extra></extra>"})
    if capacity is not None:
        data.append({"type": "scatter", "mode": "lines", "name": "capacity", "x": [lo, hi],
                     "y": [capacity, capacity], "line": {"color": "#222", "dash": "dot"},
                     "hovertemplate": f"capacity %{{y:.4g}} {unit}<extra></extra>"})
    return {"data": data, "layout": _layout(
        height=260, title={"text": f"{title} ({unit})" if unit else title, "x": 0.02,
                           "font": {"size": 13}},
        showlegend=len(data) > 1, legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.12},
        xaxis={"title": {"text": "step"}, "gridcolor": "#eee"},
        yaxis={"gridcolor": "#eee", "type": "log" if log_y else "linear", "exponentformat": "e"},
        margin={"l": 60, "r": 20, "t": 40, "b": 40})}


# ----------------------------------------------------------------------------------------------
# HTML

CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;
background:#f4f5f7}
main{max-width:1400px;margin:0 auto;padding:18px 22px 40px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:17px;margin:0 0 6px}
.sub{color:#555;margin:0 0 12px}
section{background:#fff;border:1px solid #dde0e4;border-radius:8px;padding:14px 16px;margin:14px 0}
.note{color:#555;font-size:13px;margin:4px 0 8px}
.warn{color:#a61b1b;font-weight:600}
.ok{color:#1f7a3a}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0 0}
.card{background:#fff;border:1px solid #dde0e4;border-radius:8px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
.two{display:grid;grid-template-columns:minmax(0,2fr) minmax(0,1fr);gap:14px}
.grid3{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:10px}
@media (max-width:1000px){.two,.grid3{grid-template-columns:minmax(0,1fr)}}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:4px 8px;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap}
th{background:#f7f8fa;position:sticky;top:0}
td.l,th.l{text-align:left;white-space:normal}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
table.sortable th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
tr.chosen td{background:#eef5ff;font-weight:600}
.scroll{max-height:520px;overflow:auto;border:1px solid #eceef1}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0}
dl.kv dt{color:#555}dl.kv dd{margin:0}
ul{margin:4px 0 0 18px;padding:0}
details summary{cursor:pointer;color:#333;margin:6px 0}
"""

# Runs before plotly.js: records uncaught errors on <body data-errors> for tests.
ERROR_JS = """window.__reportErrors=[];window.addEventListener('error',function(e){
window.__reportErrors.push(String(e.message||e));if(document.body){document.body.dataset.errors=
String(window.__reportErrors.length);document.body.dataset.errorText=window.__reportErrors.join(' | ');}});"""

APP_JS = r"""
(function () {
  "use strict";
  var T0 = performance.now();
  document.body.dataset.scriptMs = T0.toFixed(0);  // plotly.js parsed and run
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var CONFIG = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"]};

  function rankLabels(rm) {  // hover text (and in-cell text) of every rank-map cell
    var gpn = rm.gpus_per_node, per = rm.nodes_per_cell, dp = rm.dp, tp = rm.tp, world = rm.world;
    var hover = [], cell = rm.labelled ? [] : null;
    function describe(r) {
      var tensor = r % tp, data = Math.floor(r / tp) % dp, pipe = Math.floor(r / (tp * dp));
      var g0 = r - tensor, g1 = g0 + tp - 1;
      var cross = Math.floor(g0 / gpn) !== Math.floor(g1 / gpn);
      return {pipe: pipe, data: data, tensor: tensor, tpGroup: Math.floor(r / tp),
              tpRanks: tp > 1 ? " (ranks " + g0 + "\u2013" + g1 + (cross ? ", CROSSES NODES" : "") + ")" : "",
              dpGroup: pipe * tp + tensor, ppGroup: data * tp + tensor};
    }
    for (var y = 0; y < rm.rows; y++) {
      var hrow = [], crow = [];
      for (var x = 0; x < rm.width; x++) {
        var col = Math.floor(x / (gpn + 1)), g = x % (gpn + 1), unit = col * rm.rows + y;
        var z = rm.z[y][x];
        if (z === null || g === gpn || unit >= rm.units) { hrow.push(""); crow.push(""); continue; }
        var n0 = unit * per, n1 = Math.min(n0 + per, rm.nodes) - 1;
        while (n1 > n0 && n1 * gpn + g >= world) n1--;
        var r0 = n0 * gpn + g, r1 = n1 * gpn + g, a = describe(r0), b = describe(r1);
        if (per === 1) {
          hrow.push("rank " + r0 + " \u00b7 node " + n0 + ", GPU " + g + "<br>pipeline stage " + a.pipe +
                    "<br>TP group " + a.tpGroup + a.tpRanks + ", tensor rank " + a.tensor +
                    "<br>DP replica " + a.data + " (DP group " + a.dpGroup + ")" +
                    "<br>PP group " + a.ppGroup);
          crow.push("t" + a.tpGroup + "<br>d" + a.data);
        } else {
          var count = n1 - n0 + 1;
          hrow.push("nodes " + n0 + "\u2013" + n1 + ", GPU " + g + ": " + count + " ranks (" + r0 + ", " +
                    (r0 + gpn) + ", \u2026, " + r1 + ")<br>pipeline stage " +
                    (a.pipe === b.pipe ? a.pipe : a.pipe + "\u2013" + b.pipe + " (mixed)") +
                    "<br>TP groups " + a.tpGroup + "\u2013" + b.tpGroup + ", tensor rank " + a.tensor +
                    "<br>DP replicas " + (a.data === b.data ? a.data : a.data + "\u2013" + b.data));
          crow.push("");
        }
      }
      hover.push(hrow); cell && cell.push(crow);
    }
    return {hover: hover, cell: cell};
  }

  function cellRanks(rm, y, x) {
    var gpn = rm.gpus_per_node, col = Math.floor(x / (gpn + 1)), g = x % (gpn + 1);
    var unit = col * rm.rows + y, n = 0;
    var last = Math.min((unit + 1) * rm.nodes_per_cell, rm.nodes);
    for (var node = unit * rm.nodes_per_cell; node < last; node++)
      if (node * gpn + g < rm.world) n++;
    return n;
  }

  var jobs = [];
  Object.keys(D.figures).forEach(function (id) {
    var fig = D.figures[id], el = document.getElementById(id);
    if (!el) return;
    if (id === "fig-rank-map" && D.rank_map) {
      var t = rankLabels(D.rank_map);
      fig.data[0].hovertext = t.hover;
      if (t.cell) { fig.data[0].text = t.cell; fig.data[0].texttemplate = "%{text}";
                    fig.data[0].textfont = {size: D.rank_map.world <= 64 ? 12 : 8}; }
    }
    var t = performance.now();
    jobs.push(Plotly.newPlot(el, fig.data, fig.layout, CONFIG).then(function (gd) { return [id, gd]; }));
    el.dataset.plotMs = (performance.now() - t).toFixed(0);
  });

  Promise.all(jobs).then(function (done) {
    done.forEach(function (pair) {
      var id = pair[0], gd = pair[1], sec = gd.closest("section");
      if (id === "fig-rank-map") {
        var rm = D.rank_map, z = gd.data[0].z, ranks = 0, cells = 0;
        for (var y = 0; y < z.length; y++) for (var x = 0; x < z[y].length; x++)
          if (z[y][x] !== null) { cells++; ranks += cellRanks(rm, y, x); }
        sec.dataset.renderedRanks = ranks; sec.dataset.renderedCells = cells;
      } else if (id === "fig-schedule") {
        var stages = {}, mbs = {}, ops = 0;
        gd.data.forEach(function (tr) {
          if (tr.meta !== "forward" && tr.meta !== "backward") return;
          ops += tr.y.length;
          for (var i = 0; i < tr.y.length; i++) { stages[tr.y[i]] = 1; mbs[tr.customdata[i]] = 1; }
        });
        sec.dataset.renderedStages = Object.keys(stages).length;
        sec.dataset.renderedMicroBatches = Object.keys(mbs).length;
        sec.dataset.renderedOps = ops;
      }
    });
    document.body.dataset.plots = String(done.length);
    document.body.dataset.renderMs = performance.now().toFixed(0);
    document.body.dataset.ready = "1";
  }, function (err) {
    window.__reportErrors.push(String(err));
    document.body.dataset.errors = String(window.__reportErrors.length);
    document.body.dataset.errorText = window.__reportErrors.join(" | ");
  });

  function key(td) {
    var v = td.getAttribute("data-v");
    if (v !== null && v !== "" && !isNaN(+v)) return +v;
    return td.textContent.trim().toLowerCase();
  }
  function sortBy(table, idx, th) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[idx]), y = key(b.cells[idx]);
      var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, idx) {
      th.tabIndex = 0; th.title = th.title || "sort";
      th.addEventListener("click", function () { sortBy(table, idx, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, idx, th); }
      });
    });
  });
})();
"""

e = html.escape  # every text that reaches the page goes through it


def _attrs(**kw) -> str:
    return "".join(f' data-{k.replace("_", "-")}="{e(str(v))}"' for k, v in kw.items())


def _kv(pairs) -> str:
    return "<dl class=kv>" + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in pairs) + "</dl>"


def _table(headers, rows, cls="", left=(), row_classes=None, titles=None) -> str:
    """rows: lists of cells; a cell is text or (text, sort_value); titles: header tooltips."""
    titles = titles or {}
    head = "".join(f"<th{' class=l' if i in left else ''}"
                   + (f' title="{e(titles[h])}"' if h in titles else "") + f">{e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        tds = []
        for i, cell in enumerate(row):
            text, value = cell if isinstance(cell, tuple) else (cell, None)
            attr = f' data-v="{e(str(value))}"' if value is not None else ""
            tds.append(f"<td{' class=l' if i in left else ''}{attr}>{e(str(text))}</td>")
        rc = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{rc}>{''.join(tds)}</tr>")
    return (f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _fig_div(fig_id: str, figures: dict, fig: dict, height: int | None = None) -> str:
    figures[fig_id] = fig
    h = height or fig["layout"].get("height", 360)
    return f'<div id="{fig_id}" class="fig" style="min-height:{h}px"></div>'


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs  # lazy: only when a report is written

    return get_plotlyjs()


def _json_for_script(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _page(title: str, subtitle: str, sections: list[str], figures: dict, rank: dict | None) -> str:
    payload = {"figures": figures, "rank_map": rank}
    return "".join([
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>{e(title)}</title><style>{CSS}</style><script>{ERROR_JS}</script></head>",
        f'<body data-ready="0" data-errors="0"><main><h1>{e(title)}</h1><p class=sub>{e(subtitle)}</p>',
        *sections,
        '<p class=note>Written by llmlaunch; charts by plotly.js (inlined, works offline).</p></main>',
        f"<script>{_plotly_js()}</script>",
        f'<script type="application/json" id="report-data">{_json_for_script(payload)}</script>',
        f"<script>{APP_JS}</script></body></html>"])


# ----------------------------------------------------------------------------------------------
# the plan page

def _cards(cand, cluster, predicted: bool = False) -> str:
    from .render import _fmt_count

    lay, step = cand.layout, cand.step
    worst = cand.worst_stage
    est = "predicted " if predicted else ""
    items = [(f"dp {lay.dp} × pp {lay.pp} × tp {lay.tp}", f"{lay.world_size} GPUs"),
             (f"{lay.micro_batch} × {lay.grad_accum}", "micro-batch × micro-batches (m)"),
             (f"ZeRO-{lay.zero_stage}, {lay.recompute}", "ZeRO stage, recompute"),
             (f"{step.total_s:.4g} s", f"{est}step time"),
             (f"{_fmt_count(cand.tokens_per_s)} tokens/s", f"{est}throughput"),
             (f"{cand.tflops_per_gpu:.1f} TFLOP/s", f"{est}per GPU, MFU {cand.mfu:.1%}"),
             (f"{worst.total / GIB:.1f} GiB", f"{est}worst stage (stage {worst.stage}) of "
                                              f"{cluster.gpu.memory_gib:g} GiB"),
             (f"{cand.bubble_fraction:.1%}", "bubble (p−1)/(m+p−1)")]
    return "<div class=cards>" + "".join(f"<div class=card><b>{e(a)}</b><span>{e(b)}</span></div>"
                                         for a, b in items) + "</div>"


def _rank_map_section(cand, cluster, figures) -> tuple[str, dict]:
    lay = cand.layout
    rm = rank_map(lay.dp, lay.pp, lay.tp, cluster.gpus_per_node)
    per = rm["nodes_per_cell"]
    crosses = [(axis, rm[f"{axis}_crosses_nodes"]) for axis in ("tp", "pp", "dp")]
    words = {"tp": "TP groups", "pp": "PP groups", "dp": "DP groups"}
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
    attrs = _attrs(ranks=rm["world"], dp=lay.dp, pp=lay.pp, tp=lay.tp, nodes=rm["nodes"],
                   gpus_per_node=rm["gpus_per_node"], nodes_per_cell=per,
                   cells=sum(v is not None for row in rm["z"] for v in row))
    html_ = (f'<section id="rank-map"{attrs}>'
             f"<h2>Rank map</h2><p class=note>{e(agg)} Colour: pipeline stage. {e(labels)} "
             f"Rank = (stage × dp + replica) × tp + tensor rank (DeepSpeed's topology).</p>"
             f"<p class=note>{status}"
             + (f'; <span class="warn">{len(rm["tp_crossing_cells"])} cell(s) marked ✕ hold ranks '
                f"whose TP group crosses a node</span>" if rm["tp_crossing_cells"] else "")
             + "</p>" + _fig_div("fig-rank-map", figures, rank_map_figure(rm)) + "</section>")
    return html_, rm


def _schedule_section(inputs, cand, figures) -> str:
    sch = schedule(inputs.spec, inputs.cluster, cand, inputs.options)
    lay, step = cand.layout, cand.step
    capped = (f"Drawn: {sch.drawn} of m = {sch.micro_batches} micro-batches (capped at "
              f"{drawn_micro_batches(lay.pp, sch.micro_batches + 1)} for "
              f"readability); the real step repeats the steady state {sch.micro_batches - sch.drawn} "
              f"more times. " if sch.drawn < sch.micro_batches else
              f"All m = {sch.micro_batches} micro-batches drawn. ")
    scale, unit = _time_unit(max(sch.pipeline_s, step.total_s))
    note = (f"1F1B, {lay.pp} stage(s) × time; numbers are micro-batch indices. Per micro-batch on the "
            f"slowest stage: forward {max(sch.fwd) * scale:.3g} {unit}, backward "
            f"{max(sch.bwd) * scale:.3g} {unit} (forward = {'1/4' if lay.recompute == 'full' else '1/3'} "
            f"of compute + TP all-reduce, plus the activation send; backward the rest, plus the "
            f"gradient send). Hatched: idle (pipeline bubble, {cand.bubble_fraction:.1%} of the step "
            f"= (p−1)/(m+p−1)). {capped}After the flush: DP gradient reduce and optimizer step.")
    attrs = _attrs(stages=lay.pp, micro_batches=sch.micro_batches, micro_batches_drawn=sch.drawn,
                   ops=2 * lay.pp * sch.drawn)
    return (f'<section id="schedule"{attrs}>'
            f"<h2>Pipeline schedule (one step)</h2><p class=note>{e(note)}</p><div class=two><div>"
            + _fig_div("fig-schedule", figures, schedule_figure(sch, step.total_s))
            + "</div><div><h2>Step-time breakdown</h2><p class=note>The planner's estimate for the "
              "full step (all m micro-batches, slowest stage).</p>"
            + _fig_div("fig-breakdown", figures, breakdown_figure(step)) + "</div></div></section>")


def _memory_section(cand, cluster, figures) -> str:
    cap = cluster.gpu.memory_gib
    worst = cand.worst_stage
    head = cap - worst.total / GIB
    note = (f"Memory per GPU of each pipeline stage at its 1F1B peak; worst stage {worst.stage}: "
            f"{worst.total / GIB:.2f} GiB of {cap:g} GiB ({'headroom' if head >= 0 else 'OVER by'} "
            f"{abs(head):.2f} GiB). Buffers = DeepSpeed buckets + framework + 5% allocator "
            f"fragmentation.")
    return (f'<section id="memory"{_attrs(stages=len(cand.stages), capacity_gib=cap)}><h2>Memory per '
            f"pipeline stage</h2><p class=note>{e(note)}</p>"
            + _fig_div("fig-memory", figures, memory_figure(cand.stages, cap)) + "</section>")


CANDIDATE_UNITS = {"mb": "sequences per micro-batch", "accum": "micro-batches per step (m)",
                   "zero": "ZeRO stage", "mem GiB": "worst stage, GiB per GPU",
                   "step s": "seconds per optimizer step", "tokens/s": "tokens per second",
                   "TFLOP/s/GPU": "hardware TFLOP/s per GPU", "MFU": "model FLOPs utilisation, %",
                   "bubble": "idle share of the step, %"}


def _candidates_section(result, chosen) -> str:
    from .render import CANDIDATE_HEADERS, candidate_rows
    from .topology.layout import RECOMPUTE_MODES

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
    table = _table(CANDIDATE_HEADERS, rows, cls="sortable", left=(7,), row_classes=marks,
                   titles=CANDIDATE_UNITS)
    if cands:
        head = (f"{len(cands)} of {result.evaluated} evaluated layouts fit"
                + (f"; the top {len(shown)} are listed" if len(shown) < len(cands) else "")
                + ". Ranked by estimated throughput (ties within 1%: the simpler layout). "
                  "Click a column to sort; the highlighted row is the layout drawn above.")
        body = f"<div class=scroll>{table}</div>"
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
               + _table(["dp", "pp", "tp", "mb", "zero", "recompute", "why"], rows, cls="sortable",
                        left=(5, 6)) + "</div></details>")
    return (f'<section id="candidates"{_attrs(rows=len(shown), candidates=len(cands))}>'
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
    return (f'<section id="inputs"{_attrs(defaults=len(inputs.defaults))}><h2>Inputs</h2>{_kv(pairs)}'
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
            _memory_section(cand, inputs.cluster, figures)], rm


def plan_page_html(inputs, result, chosen) -> str:
    """The plan page as one HTML string (write_plan_report writes it)."""
    spec, cluster = inputs.spec, inputs.cluster
    figures: dict = {}
    title = (f"llmlaunch plan: {spec.name or spec.arch} ({inputs.params / 1e9:.1f} B) on "
             f"{cluster.gpus} × {cluster.gpu.name}")
    if chosen is not None and chosen.estimated:
        lay = chosen.layout
        subtitle = (f"{'Best' if chosen.fits else 'Pinned (does NOT fit)'} layout: dp={lay.dp} × "
                    f"pp={lay.pp} × tp={lay.tp}, micro-batch {lay.micro_batch} × {lay.grad_accum} "
                    f"accumulation × dp {lay.dp} = {lay.global_batch} sequences, ZeRO-{lay.zero_stage}, "
                    f"recompute {lay.recompute}.")
        summary = f'<section id="summary">{_cards(chosen, cluster)}</section>'
    else:
        subtitle, summary = "No layout fits: see the ruled-out layouts below.", ""
    sections, rm = _layout_sections(inputs, chosen, figures)
    sections = [summary, *sections, _candidates_section(result, chosen),
                _inputs_section(inputs)]
    return _page(title, subtitle, sections, figures, rm)


def write_plan_report(path, inputs, result, chosen) -> None:
    """Write the plan page: a self-contained .html (or .htm), or a static .png (rank map and
    schedule, via matplotlib). Written atomically (temp file + rename)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        write_plan_png(path, inputs, result, chosen)
    elif suffix in (".html", ".htm"):
        write_bytes_atomic(path, plan_page_html(inputs, result, chosen).encode("utf-8"))
    else:
        raise ValueError(f"report {str(path)!r}: use a .html or .png file name")


write_report = write_plan_report


def write_plan_png(path, inputs, result, chosen) -> None:
    """A static PNG of the rank map and the schedule of `chosen` (matplotlib)."""
    from .report_png import write_plan_png as _write

    _write(path, inputs, result, chosen)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl: one JSON object per optimizer step (blank lines skipped)."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {n} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError(f"{path}: line {n} is not an object with a 'step' key")
            rows.append(row)
    return rows


def read_validate(path: Path) -> list[dict]:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    rows = raw.get("rows") if isinstance(raw, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected {{\"rows\": [{{rank, stage, quantity, predicted, "
                         f"measured, error_pct}}, ...]}}")
    return rows


def run_prediction(config):
    """(PlanInputs, Candidate) for a run.yaml: the planner's estimate of exactly its layout."""
    from .plan_cmd import PlanInputs
    from .topology import planner
    from .topology.hardware import Cluster, gpu as catalog_gpu
    from .topology.params import total_params

    spec, layout = config.model_spec(), config.layout_obj()
    world = layout.world_size
    try:
        device = catalog_gpu(config.cluster.gpu)
        gpn = min(config.cluster.gpus_per_node or world, world)
        cluster = Cluster(gpus=world, gpus_per_node=gpn, gpu=device)
    except ValueError as exc:
        raise ValueError(f"run.yaml cluster: {exc}") from None
    precision = device.precision if config.train.precision == "auto" else config.train.precision
    options = planner.PlanOptions(global_batch=layout.global_batch, seq_len=spec.seq_len,
                                  precision=precision)
    cand = planner.evaluate(spec, cluster, layout, options)
    if not cand.estimated:
        raise ValueError(f"run.yaml: the planner cannot estimate this layout: {'; '.join(cand.reasons)}")
    notes = [f"layout from run.yaml: dp={layout.dp} pp={layout.pp} tp={layout.tp}, micro-batch "
             f"{layout.micro_batch}, grad_accum {layout.grad_accum}",
             f"precision {precision}" + (" (train.precision auto)" if config.train.precision == "auto"
                                         else ""),
             f"gpus per node {gpn} (cluster.gpus_per_node {config.cluster.gpus_per_node})"]
    inputs = PlanInputs(spec=spec, cluster=cluster, options=options, pins=planner.Pins(),
                        params=total_params(spec), defaults=notes, params_source="formula")
    return inputs, cand


def _summary(values: list[float]) -> float | None:
    """Median after warm-up: the first max(1, n/10) steps are skipped when there are more."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None
    skip = min(len(values) - 1, max(1, len(values) // 10)) if len(values) > 1 else 0
    return statistics.median(values[skip:])


def _series(metrics, key):
    pts = [(m["step"], m[key]) for m in metrics
           if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)
           and math.isfinite(m[key])]
    return [p[0] for p in pts], [_sig(p[1], 6) for p in pts]


def _run_sections(metrics, validate_rows, cand, inputs, figures) -> list[str]:
    out = []
    gpu = inputs.cluster.gpu
    if metrics:
        predicted = {"tokens_per_s": cand.tokens_per_s, "step_time_s": cand.step.total_s,
                     "memory_gib": cand.worst_stage.total / GIB, "tflops_per_gpu": cand.tflops_per_gpu,
                     "mfu": cand.mfu}
        plots = [("loss", "loss", "", None, None), ("lr", "learning rate", "", None, None),
                 ("grad_norm", "gradient norm", "", None, None),
                 ("tokens_per_s", "throughput", "tokens/s", predicted["tokens_per_s"], None),
                 ("step_time_s", "step time", "s", predicted["step_time_s"], None),
                 ("memory_gib", "memory per GPU", "GiB", predicted["memory_gib"], gpu.memory_gib)]
        divs = []
        for key, title, unit, pred, cap in plots:
            steps, values = _series(metrics, key)
            if not steps:
                continue
            fig = metric_figure(steps, values, title, unit, pred, cap)
            divs.append(f"<div>{_fig_div(f'fig-metric-{key}', figures, fig)}</div>")
        rows = []
        units = {"step_time_s": ("step time", "s", 1), "tokens_per_s": ("throughput", "tokens/s", 1),
                 "tflops_per_gpu": ("TFLOP/s per GPU", "TFLOP/s", 1), "mfu": ("MFU", "%", 100),
                 "memory_gib": ("memory per GPU (peak)", "GiB", 1)}
        for key, (name, unit, mult) in units.items():
            vals = [m.get(key) for m in metrics]
            measured = (max(v for v in vals if isinstance(v, (int, float))) if key == "memory_gib"
                        and any(isinstance(v, (int, float)) for v in vals) else _summary(vals))
            pred = predicted[key]
            err = ((measured - pred) / pred * 100) if measured is not None and pred else None
            rows.append([name, f"{pred * mult:.4g} {unit}",
                         "—" if measured is None else f"{measured * mult:.4g} {unit}",
                         ("—", None) if err is None else (f"{err:+.1f} %", _sig(err, 6))])
        last = metrics[-1]
        note = (f"{len(metrics)} optimizer steps in metrics.jsonl (last step {last.get('step')}). "
                "Measured: median after the first steps (warm-up) are skipped; memory: the largest "
                "value logged. Predicted: the planner's estimate of this run's layout on "
                f"{inputs.cluster.gpus} × {gpu.name} (worst stage for memory).")
        out.append(f'<section id="metrics"{_attrs(steps=len(metrics), plots=len(divs))}><h2>Training '
                   f"metrics</h2><p class=note>{e(note)}</p><div class=grid3>{''.join(divs)}</div>"
                   "</section>")
        out.append(f'<section id="predicted"{_attrs(rows=len(rows))}><h2>Measured vs predicted</h2>'
                   + _table(["quantity", "predicted", "measured", "error"], rows, cls="sortable",
                            left=(0,)) + "</section>")
    else:
        out.append('<section id="metrics" data-steps="0"><h2>Training metrics</h2><p class=note>'
                   "No metrics.jsonl in the run directory yet.</p></section>")
    if validate_rows is not None:
        rows = []
        for r in validate_rows:
            def num(v, digits=4):
                return (f"{v:.{digits}g}", _sig(v, 8)) if isinstance(v, (int, float)) else (
                    "" if v is None else str(v), None)
            err = r.get("error_pct")
            rows.append([num(r.get("rank")), num(r.get("stage")), str(r.get("quantity", "")),
                         num(r.get("predicted")), num(r.get("measured")),
                         (f"{err:+.1f} %", _sig(err, 6)) if isinstance(err, (int, float)) else ""])
        out.append(f'<section id="validate"{_attrs(rows=len(rows))}><h2>Validation '
                   "(validate.json)</h2><p class=note>Per rank and quantity, the planner's prediction "
                   "against what the run measured; error = (measured − predicted) / predicted.</p>"
                   "<div class=scroll>" + _table(["rank", "stage", "quantity", "predicted", "measured",
                                                 "error"], rows, cls="sortable", left=(2,))
                   + "</div></section>")
    return out


def run_page_html(run_dir) -> str:
    """The run page as one HTML string (write_run_report writes it)."""
    from .config import load_run_dir_config
    from .topology import planner

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"report: {str(run_dir)!r} is not a run directory")
    config = load_run_dir_config(run_dir)
    inputs, cand = run_prediction(config)
    metrics_path, validate_path = run_dir / "metrics.jsonl", run_dir / "validate.json"
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else []
    validate_rows = read_validate(validate_path) if validate_path.is_file() else None
    result = planner.SearchResult(candidates=[cand] if cand.fits else [],
                                  rejected=[] if cand.fits else [cand], evaluated=1)
    figures: dict = {}
    spec, lay = inputs.spec, cand.layout
    title = (f"llmlaunch run: {run_dir.resolve().name} ({spec.arch}, {inputs.params / 1e6:.1f} M "
             f"parameters) on {inputs.cluster.gpus} × {inputs.cluster.gpu.name}")
    subtitle = (f"Layout dp={lay.dp} × pp={lay.pp} × tp={lay.tp}, micro-batch {lay.micro_batch} × "
                f"{lay.grad_accum} accumulation × dp {lay.dp} = {lay.global_batch} sequences, "
                f"ZeRO-{lay.zero_stage}, recompute {lay.recompute}; {config.train.steps} steps planned.")
    layout_html, rm = _layout_sections(inputs, cand, figures)
    extra = [("run directory", str(run_dir.resolve())),
             ("train", f"{config.train.steps} steps, lr {config.train.lr:g} → {config.train.min_lr:g}, "
                       f"warmup {config.train.warmup_steps}, weight decay {config.train.weight_decay:g}, "
                       f"clip {config.train.grad_clip:g}, seed {config.train.seed}")]
    sections = [f'<section id="summary">{_cards(cand, inputs.cluster, predicted=True)}</section>',
                *_run_sections(metrics, validate_rows, cand, inputs, figures), *layout_html,
                _candidates_section(result, cand), _inputs_section(inputs, extra)]
    return _page(title, subtitle, sections, figures, rm)


def write_run_report(run_dir, out_path=None) -> Path:
    """Write the run page (default RUN_DIR/report.html; a .png path gets the static rank map and
    schedule). Returns the path written."""
    run_dir = Path(run_dir)
    out = Path(out_path) if out_path else run_dir / "report.html"
    suffix = out.suffix.lower()
    if suffix == ".png":
        from .config import load_run_dir_config
        from .topology import planner

        inputs, cand = run_prediction(load_run_dir_config(run_dir))
        write_plan_png(out, inputs, planner.SearchResult([cand], [], 1), cand)
        return out
    if suffix not in (".html", ".htm"):
        raise ValueError(f"report --out {str(out)!r}: use a .html or .png file name")
    write_bytes_atomic(out, run_page_html(run_dir).encode("utf-8"))
    return out


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (run.yaml, metrics.jsonl, "
                                                            "optional validate.json)")
    parser.add_argument("--out", metavar="FILE.html", help="where to write (default RUN_DIR/report.html;"
                                                           " a .png gets a static image)")


def run_report(args) -> int:
    out = write_run_report(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0
