"""The plan page (`llmlaunch plan ... --report FILE.html|FILE.png`): one self-contained page of the
chosen layout (see report/__init__.py for its sections)."""
from __future__ import annotations

from pathlib import Path

from llmlaunch.atomic import write_bytes_atomic
from llmlaunch.topology.plan_inputs import PlanInputs
from llmlaunch.topology.planner import Candidate, SearchResult

from .page import page
from .sections import _candidates_section, _cards, _inputs_section, _layout_sections
from .text import estimate_only_reasons


def horizon_section(horizon, tokens: float, gpus: int) -> str:
    """`plan --tokens`: the run's days, GPU-hours, cost and energy, as the text report prints them
    (topology/cost.py: cost_from_throughput)."""
    from .page import e

    items = [(f"{horizon.wall_days:,.1f} days", f"wall clock on {gpus} GPUs for {tokens:.3g} tokens"),
             (f"{horizon.gpu_hours:,.0f}", "GPU-hours"),
             (f"${horizon.cost_usd:,.0f}", "cost"),
             (f"{horizon.energy_mwh:,.0f} MWh", "energy at TDP × PUE"),
             (f"{horizon.flops:.3g}", "FLOPs executed")]
    cards = "".join(f"<div class=card><b>{e(a)}</b><span>{e(b)}</span></div>" for a, b in items)
    return f'<section id="horizon"><h2>Horizon</h2><div class=cards>{cards}</div></section>'


def plan_page_html(inputs: PlanInputs, result: SearchResult, chosen: Candidate | None,
                   horizon=None, tokens: float | None = None) -> str:
    """The plan page as one HTML string (write_plan_report writes it); with `horizon` (plan
    --tokens: a RunCost) its horizon section."""
    spec, cluster = inputs.spec, inputs.cluster
    figures: dict = {}
    title = (f"llmlaunch plan: {spec.name or spec.arch} ({inputs.params / 1e9:.1f} B) on "
             f"{cluster.gpus} × {cluster.gpu.name}")
    if chosen is not None and chosen.estimated:
        lay = chosen.layout
        cp = f" × cp={lay.cp} ({lay.cp_kind})" if lay.cp > 1 else ""
        subtitle = (f"{'Best' if chosen.fits else 'Pinned (does NOT fit)'} layout: dp={lay.dp} × "
                    f"pp={lay.pp} × tp={lay.tp}{cp}, micro-batch {lay.micro_batch} × {lay.grad_accum} "
                    f"accumulation × dp {lay.dp} = {lay.global_batch} sequences, ZeRO-{lay.zero_stage}, "
                    f"recompute {lay.recompute}; engine {inputs.options.engine}, "
                    f"{inputs.options.precision}.")
        estimate = estimate_only_reasons(lay, inputs)
        if estimate:
            subtitle += " Estimate only: " + "; ".join(estimate) + "."
        summary = f'<section id="summary">{_cards(chosen, cluster)}</section>'
        if horizon is not None and tokens:
            summary += horizon_section(horizon, tokens, cluster.gpus)
    else:
        subtitle, summary = "No layout fits: see the ruled-out layouts below.", ""
    sections, rm = _layout_sections(inputs, chosen, figures)
    sections = [summary, *sections, _candidates_section(result, chosen),
                _inputs_section(inputs)]
    return page(title, subtitle, sections, figures, rm)


def write_plan_report(path: str | Path, inputs: PlanInputs, result: SearchResult,
                      chosen: Candidate | None, horizon=None, tokens: float | None = None) -> None:
    """Write the plan page: a self-contained .html (or .htm), or a static .png (rank map and
    schedule, via matplotlib). Written atomically (temp file + rename)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        from .png import write_plan_png  # matplotlib: only for a PNG

        write_plan_png(path, inputs, result, chosen)
    elif suffix in (".html", ".htm"):
        write_bytes_atomic(path, plan_page_html(inputs, result, chosen, horizon, tokens).encode("utf-8"))
    else:
        raise ValueError(f"report {str(path)!r}: use a .html or .png file name")


write_report = write_plan_report  # its name in llmlaunch 0.1 (docs/report.md)
