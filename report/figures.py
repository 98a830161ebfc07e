"""Plotly figures of a plan and a run, as plain dicts for plotly.js (small, and no template is
embedded per figure): the rank map, the pipeline schedule, the step-time breakdown, memory per stage,
and a metric over steps. No plotting library is imported here."""
from __future__ import annotations

import math

from llmlaunch.topology.schedule import Schedule

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
                   ("optimizer_s", "optimizer step", "#b07aa1"),
                   ("ep_comm_s", "EP all-to-all", "#59a14f"))


FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12}


def _sig(x: float, digits: int = 5) -> float:
    """x rounded to `digits` significant digits (keeps the page's JSON short)."""
    return float(f"{x:.{digits}g}")


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
        ops = [op for op in sch.ops if op.kind == kind]
        items = [(op.stage, op.start_s, op.duration_s) for op in ops]
        mbs = [op.micro_batch for op in ops]
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


def breakdown_parts(step) -> tuple:
    """BREAKDOWN_PARTS that the step has: the MoE all-to-all only where there is one."""
    return tuple(p for p in BREAKDOWN_PARTS if p[0] != "ep_comm_s" or step.ep_comm_s)


def breakdown_figure(step) -> dict:
    total = step.total_s
    scale, unit = _time_unit(total)
    parts = breakdown_parts(step)
    names = [name for _, name, _ in parts]
    values = [getattr(step, key) for key, _, _ in parts]
    return {"data": [{
        "type": "bar", "orientation": "h", "y": names, "x": [_sig(v * scale) for v in values],
        "marker": {"color": [c for _, _, c in parts]}, "meta": "breakdown",
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
