"""The run page (`llmlaunch report RUN_DIR`): the plan page of a trained run's layout plus its
measured curves from metrics.jsonl, measured against predicted, and validate.json's table."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from llmlaunch.atomic import write_bytes_atomic
from llmlaunch.config import RunConfig, load_run_dir_config
from llmlaunch.metrics_file import read_metrics
from llmlaunch.run_files import METRICS, VALIDATE
from llmlaunch.topology.hardware import GIB
from llmlaunch.topology.plan_inputs import PlanInputs, estimate_layout
from llmlaunch.topology.planner import Candidate, SearchResult

from .figures import _sig, metric_figure
from .page import attrs, e, fig_div, page, table
from .sections import _candidates_section, _cards, _inputs_section, _layout_sections


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


def run_prediction(config: RunConfig) -> tuple[PlanInputs, Candidate]:
    """(PlanInputs, Candidate) for a run.yaml: the planner's estimate of exactly its layout, through
    the one adapter (RunConfig.plan_inputs)."""
    try:
        inputs = config.plan_inputs()
        return inputs, estimate_layout(inputs, config.layout_obj())
    except ValueError as exc:
        raise ValueError(f"run.yaml: {exc}") from None


def predicted_step_time_s(metrics: list[dict], cand: Candidate) -> float:
    """The step time the run itself predicted and logged (metrics.jsonl's step_time_predicted_s,
    the trainer's StepMonitor: the planner on the rank's resolved precision, layout and this host's
    measured speed), else the planner's estimate of run.yaml now. The page and the training log
    then show one figure: a second estimate would measure the host again, under other load."""
    logged = [m["step_time_predicted_s"] for m in metrics
              if isinstance(m.get("step_time_predicted_s"), (int, float))]
    return logged[-1] if logged else cand.step.total_s


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
        predicted = {"tokens_per_s": cand.tokens_per_s,
                     "step_time_s": predicted_step_time_s(metrics, cand),
                     "memory_gib": cand.worst_stage.total / GIB, "tflops_per_gpu": cand.tflops_per_gpu,
                     "mfu": cand.mfu}
        plots = [("loss", "loss", "", None, None),
                 ("eval_loss", "validation loss (train.eval_every)", "", None, None),
                 ("lr", "learning rate", "", None, None),
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
            divs.append(f"<div>{fig_div(f'fig-metric-{key}', figures, fig)}</div>")
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
        out.append(f'<section id="metrics"{attrs(steps=len(metrics), plots=len(divs))}><h2>Training '
                   f"metrics</h2><p class=note>{e(note)}</p><div class=grid3>{''.join(divs)}</div>"
                   "</section>")
        out.append(f'<section id="predicted"{attrs(rows=len(rows))}><h2>Measured vs predicted</h2>'
                   + table(["quantity", "predicted", "measured", "error"], rows, cls="sortable",
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
        out.append(f'<section id="validate"{attrs(rows=len(rows))}><h2>Validation '
                   "(validate.json)</h2><p class=note>Per rank and quantity, the planner's prediction "
                   "against what the run measured; error = (measured − predicted) / predicted.</p>"
                   "<div class=scroll>" + table(["rank", "stage", "quantity", "predicted", "measured",
                                                 "error"], rows, cls="sortable", left=(2,))
                   + "</div></section>")
    return out


def guard_section(metrics) -> str:
    """The guard's decisions (launcher/guard.py): one row per step it skipped or rolled back, from
    the `guard` field of metrics.jsonl; empty when it took none."""
    rows = [[(str(m["step"]), m["step"]), str(m["guard"].get("action", "")),
             str(m["guard"].get("to", "")), str(m["guard"].get("reason", ""))]
            for m in metrics if isinstance(m.get("guard"), dict)]
    if not rows:
        return ""
    return (f'<section id="guard"{attrs(rows=len(rows))}><h2>Guard decisions</h2><p class=note>'
            "Steps judged unhealthy before their update (docs/launch.md, \"The guard\"): skipped "
            "(the batch consumed, no update) or rolled back to a verified checkpoint, the batches "
            "since it skipped (RUN_DIR/skipped.json).</p>"
            + table(["step", "action", "rolled back to", "reason"], rows, cls="sortable",
                    left=(1, 3)) + "</section>")


def stragglers_section(metrics) -> str:
    """The ranks named slow (launcher/stragglers.py), from metrics.jsonl's `stragglers` field."""
    rows = [[(str(m["step"]), m["step"]), (str(s.get("rank")), s.get("rank")), str(s.get("host")),
             (f"{s.get('ratio', 0):.2f}x", s.get("ratio")), f"{s.get('seconds', 0):.4g} s"]
            for m in metrics if isinstance(m.get("stragglers"), list)
            for s in m["stragglers"] if isinstance(s, dict)]
    if not rows:
        return ""
    return (f'<section id="stragglers"{attrs(rows=len(rows))}><h2>Stragglers</h2><p class=note>'
            "Ranks whose forward time per step exceeded the median of the ranks doing the same "
            "work (same stage and TP rank) by more than train.stragglers.margin, compared every "
            "train.stragglers.every steps (docs/launch.md, \"Stragglers\").</p>"
            + table(["step", "rank", "host", "vs median", "forward per step"], rows,
                    cls="sortable", left=(2,)) + "</section>")


def run_page_html(run_dir: str | Path) -> str:
    """The run page as one HTML string (write_run_report writes it)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"report: {str(run_dir)!r} is not a run directory")
    config = load_run_dir_config(run_dir)
    inputs, cand = run_prediction(config)
    metrics_path, validate_path = run_dir / METRICS, run_dir / VALIDATE
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else []
    validate_rows = read_validate(validate_path) if validate_path.is_file() else None
    result = SearchResult(candidates=[cand] if cand.fits else [],
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
                *_run_sections(metrics, validate_rows, cand, inputs, figures),
                *filter(None, [guard_section(metrics), stragglers_section(metrics)]), *layout_html,
                _candidates_section(result, cand), _inputs_section(inputs, extra)]
    return page(title, subtitle, sections, figures, rm)


def write_run_report(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the run page (default RUN_DIR/report.html; a .png path gets the static rank map and
    schedule). Returns the path written."""
    run_dir = Path(run_dir)
    out = Path(out_path) if out_path else run_dir / "report.html"
    suffix = out.suffix.lower()
    if suffix == ".png":
        from .png import write_plan_png  # matplotlib: only for a PNG

        inputs, cand = run_prediction(load_run_dir_config(run_dir))
        write_plan_png(out, inputs, SearchResult([cand], [], 1), cand)
        return out
    if suffix not in (".html", ".htm"):
        raise ValueError(f"report --out {str(out)!r}: use a .html or .png file name")
    write_bytes_atomic(out, run_page_html(run_dir).encode("utf-8"))
    return out
