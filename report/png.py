"""A static PNG of a plan: the rank map, the 1F1B schedule and memory per stage (matplotlib).

The same data as the HTML page (rank_map.py, topology/schedule.py); matplotlib is imported only
here, with its non-interactive Agg canvas (no pyplot, no display).
"""
from __future__ import annotations

from pathlib import Path

from llmlaunch.atomic import write_bytes_atomic
from llmlaunch.topology.hardware import GIB
from llmlaunch.topology.plan_inputs import PlanInputs
from llmlaunch.topology.planner import Candidate, SearchResult
from llmlaunch.topology.schedule import candidate_schedule

from .figures import MEMORY_PARTS, MIXED_COLOUR, SCHEDULE_COLOURS, _time_unit, breakdown_parts, stage_colours
from .rank_map import rank_map

# In-cell labels (TP group, DP replica) are drawn up to this many ranks.
PNG_LABELLED_RANKS = 256


def write_plan_png(path: str | Path, inputs: PlanInputs, result: SearchResult,
                   chosen: Candidate | None) -> None:
    """Write a PNG of the chosen layout (or a note that none fits). Atomic: temp file + rename."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    spec, cluster = inputs.spec, inputs.cluster
    title = (f"llmlaunch plan: {spec.name or spec.arch} ({inputs.params / 1e9:.1f} B) on "
             f"{cluster.gpus} x {cluster.gpu.name}")
    if chosen is None or not chosen.estimated:
        fig = Figure(figsize=(10, 2.5), dpi=100)
        fig.text(0.02, 0.7, title, fontsize=14, weight="bold")
        fig.text(0.02, 0.35, "No layout fits: see `llmlaunch plan --show-rejected`.", fontsize=12)
        _save(fig, FigureCanvasAgg, path)
        return

    lay, step = chosen.layout, chosen.step
    rm = rank_map(lay, cluster.gpus_per_node)
    sch = candidate_schedule(chosen)
    map_h = min(9.0, max(1.6, 0.26 * rm["rows"] + 0.9))
    sched_h = min(7.0, max(2.2, 0.28 * lay.pp + 1.2))
    fig = Figure(figsize=(14, map_h + sched_h + 3.6 + 1.2), dpi=100, layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[map_h, sched_h, 3.6], width_ratios=[3, 1])
    verdict = "" if chosen.fits else " (pinned, does NOT fit)"
    fig.suptitle(f"{title}\ndp={lay.dp} x pp={lay.pp} x tp={lay.tp}, micro-batch {lay.micro_batch} x "
                 f"{lay.grad_accum}, ZeRO-{lay.zero_stage}, recompute {lay.recompute}{verdict}: "
                 f"step {step.total_s:.3g} s, {chosen.tokens_per_s:,.0f} tokens/s, MFU {chosen.mfu:.1%}",
                 fontsize=12, x=0.01, ha="left")

    # rank map
    ax = fig.add_subplot(grid[0, :])
    colours = stage_colours(lay.pp)
    z = np.array([[np.nan if v is None else v for v in row] for row in rm["z"]], dtype=float)
    cmap = ListedColormap([MIXED_COLOUR] + colours).with_extremes(bad="white")
    norm = BoundaryNorm(np.arange(-1.5, lay.pp, 1.0), cmap.N)
    ax.imshow(np.ma.masked_invalid(z), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if rm["width"] * rm["rows"] <= 8192:  # cell borders
        ax.set_xticks(np.arange(-0.5, rm["width"], 1.0), minor=True)
        ax.set_yticks(np.arange(-0.5, rm["rows"], 1.0), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    per, gpn = rm["nodes_per_cell"], rm["gpus_per_node"]
    if per == 1 and rm["world"] <= PNG_LABELLED_RANKS:
        for y in range(rm["rows"]):
            for x in range(rm["width"]):
                col, g = divmod(x, gpn + 1)
                unit = col * rm["rows"] + y
                if rm["z"][y][x] is None:
                    continue
                r = unit * gpn + g
                ax.text(x, y, f"t{r // lay.tp}\nd{(r // lay.tp) % lay.dp}", ha="center",
                        va="center", fontsize=6, color="white")
    for x, y in rm["tp_crossing_cells"]:
        ax.plot(x, y, marker="x", color="#d62728", markersize=6)
    xt, xl = [], []
    for col in range(rm["columns"]):
        first, last = col * rm["rows"] * per, min((col + 1) * rm["rows"] * per, rm["nodes"]) - 1
        if first <= last:
            xt.append(col * (gpn + 1) + (gpn - 1) / 2)
            xl.append(f"node {first}" if first == last else f"nodes {first}-{last}")
    ax.set_xticks(xt, xl, fontsize=8)
    ax.xaxis.tick_top()
    ystep = max(1, -(-rm["rows"] // 12))
    ax.set_yticks(range(0, rm["rows"], ystep), [f"+{r * per}" for r in range(0, rm["rows"], ystep)],
                  fontsize=8)
    where = "one cell per GPU" if per == 1 else f"each cell = one GPU slot of {per} nodes"
    ax.set_title(f"rank map: {rm['world']} ranks on {rm['nodes']} node(s) of {gpn} GPUs ({where}); "
                 "colour = pipeline stage", fontsize=10, loc="left", pad=18)
    ax.set_ylabel("node offset", fontsize=9)
    shown = range(0, lay.pp, max(1, -(-lay.pp // 12)))
    ax.legend(handles=[Patch(color=colours[s], label=f"stage {s}") for s in shown],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)

    # schedule
    ax = fig.add_subplot(grid[1, 0])
    scale, unit = _time_unit(max(sch.pipeline_s, step.total_s))
    for s, start, dur in sch.idle:
        ax.barh(s, dur * scale, left=start * scale, height=0.8, color=SCHEDULE_COLOURS["bubble"],
                hatch="///", edgecolor="#b0b0b0", linewidth=0)
    for kind, name in (("F", "forward"), ("B", "backward")):
        ops = [o for o in sch.ops if o.kind == kind]
        ax.barh([o.stage for o in ops], [o.duration_s * scale for o in ops],
                left=[o.start_s * scale for o in ops],
                height=0.8, color=SCHEDULE_COLOURS[name], edgecolor="white", linewidth=0.4)
    for kind in ("dp", "optimizer"):
        items = [t for t in sch.tail if t[1] == kind]
        if items:
            ax.barh([t[0] for t in items], [t[3] * scale for t in items],
                    left=[t[2] * scale for t in items], height=0.8, color=SCHEDULE_COLOURS[kind])
    ax.invert_yaxis()
    ystep = max(1, -(-lay.pp // 16))
    ax.set_yticks(range(0, lay.pp, ystep), [f"stage {s}" for s in range(0, lay.pp, ystep)],
                  fontsize=8)
    ax.set_xlabel(f"time ({unit})", fontsize=9)
    drawn = (f"{sch.drawn} of {sch.micro_batches} micro-batches drawn" if sch.drawn < sch.micro_batches
             else f"{sch.micro_batches} micro-batches")
    ax.set_title(f"1F1B schedule, one step ({drawn}); bubble {chosen.bubble_fraction:.1%}",
                 fontsize=10, loc="left")
    ax.legend(handles=[Patch(color=SCHEDULE_COLOURS[k], label=n) for k, n in (
        ("forward", "forward"), ("backward", "backward"), ("bubble", "idle (bubble)"),
        ("dp", "DP reduce"), ("optimizer", "optimizer"))], fontsize=7, ncols=5, loc="lower left",
        bbox_to_anchor=(0, 1.06), frameon=False)

    # step-time breakdown
    ax = fig.add_subplot(grid[1, 1])
    bscale, bunit = _time_unit(step.total_s)
    parts = breakdown_parts(step)
    names = [n for _, n, _ in parts]
    vals = [getattr(step, k) * bscale for k, _, _ in parts]
    ax.barh(names, vals, color=[c for _, _, c in parts])
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    ax.set_xlabel(f"{bunit} per step", fontsize=8)
    ax.set_title(f"step {step.total_s * bscale:.3g} {bunit}", fontsize=10, loc="left")

    # memory per stage
    ax = fig.add_subplot(grid[2, :])
    xs = [st.stage for st in chosen.stages]
    bottom = np.zeros(len(xs))
    for part, colour in MEMORY_PARTS:
        vals = np.array([getattr(st, part) / GIB for st in chosen.stages])
        ax.bar(xs, vals, bottom=bottom, color=colour, label=part, width=0.8)
        bottom += vals
    cap = cluster.gpu.memory_gib
    ax.axhline(cap, color="#222", linestyle="--", linewidth=1.2, label=f"capacity {cap:g} GiB")
    pad = max(0.0, (4 - len(xs)) / 2)
    ax.set_xlim(-0.6 - pad, len(xs) - 0.4 + pad)
    ax.set_xticks(xs[::max(1, -(-len(xs) // 32))])
    ax.set_ylim(0, max(cap, float(bottom.max())) * 1.1)
    ax.set_xlabel("pipeline stage", fontsize=9)
    ax.set_ylabel("GiB per GPU", fontsize=9)
    ax.set_title("memory per pipeline stage", fontsize=10, loc="left")
    ax.legend(fontsize=7, ncols=6, loc="upper right", frameon=False)
    _save(fig, FigureCanvasAgg, path)


def _save(fig, canvas_cls, path: Path) -> None:
    import io

    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())


__all__ = ["write_plan_png"]
