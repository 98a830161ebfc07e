"""The HTML/PNG plan and run reports (llmlaunch.report_html): the data behind the charts, and the
pages as a real headless browser (Debian's chromium) renders them: no errors, every rank on the rank
map, every stage and the drawn micro-batches on the schedule, a non-blank screenshot.

The browser tests need `chromium` (apt-get install -y chromium); without it they FAIL, they do not
skip. Counts are read from the DOM the page leaves after drawing (data-* attributes, see the module
docstring of llmlaunch.report_html)."""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmlaunch import report_html
from llmlaunch.config import RunConfig, dump_run_config
from llmlaunch.plan_cmd import add_plan_arguments, resolve_inputs
from llmlaunch.topology import planner
from llmlaunch.topology.layout import rank_coords
from llmlaunch.topology.step_time import pipeline_time_s

SIZE_LIMIT = 5_000_000  # bytes: the page for 131072 GPUs stays under 5 MB
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                  "--enable-logging=stderr", "--v=0"]


# ------------------------------------------------------------------------------------------------
# helpers (benchmarks/bench_report.py imports these)

def plan(*argv):
    """(inputs, result, chosen) as `llmlaunch plan ARGV` computes them."""
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    inputs = resolve_inputs(parser.parse_args(list(argv)))
    layout = None
    p = inputs.pins
    if None not in (p.dp, p.pp, p.tp, p.micro_batch, p.zero_stage, p.recompute):
        from llmlaunch.plan_cmd import pinned_layout

        layout = pinned_layout(inputs)
    if layout is not None:
        cand = planner.evaluate(inputs.spec, inputs.cluster, layout, inputs.options)
        result = planner.SearchResult([cand] if cand.fits else [], [] if cand.fits else [cand], 1)
        return inputs, result, cand if cand.estimated else None
    result = planner.search(inputs.spec, inputs.cluster, inputs.options, inputs.pins)
    return inputs, result, result.candidates[0] if result.candidates else None


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("the report tests render pages in a real headless browser, and no chromium was "
                "found on PATH: install it with `apt-get update && apt-get install -y chromium`",
                pytrace=False)


def run_chromium(page: Path, profile: Path, *extra: str, timeout: int = 90):
    """Run headless chromium on a local page with a fresh profile; (stdout, console lines)."""
    cmd = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra,
           page.resolve().as_uri()]
    shutil.rmtree(profile, ignore_errors=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout, console


def dump_dom(page: Path, profile: Path):
    """The DOM after the page's scripts ran, and the console lines chromium logged. The page sets
    <body data-ready="1"> once every plot is drawn; if the dump came before that, retry with a
    virtual-time budget that lets pending tasks finish."""
    dom, console = run_chromium(page, profile, "--dump-dom")
    if body_attrs(dom).get("ready") != "1":
        dom, console = run_chromium(page, profile, "--dump-dom", "--virtual-time-budget=5000")
    return dom, console


def screenshot(page: Path, profile: Path, out: Path, size=(1400, 2400)) -> Path:
    run_chromium(page, profile, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}")
    assert out.is_file(), "chromium wrote no screenshot"
    return out


def body_attrs(dom: str) -> dict:
    match = re.search(r"<body([^>]*)>", dom)
    return _attrs(match.group(1)) if match else {}


def section_attrs(dom: str, section_id: str) -> dict:
    match = re.search(rf'<section id="{section_id}"([^>]*)>', dom)
    assert match, f"no section #{section_id} in the rendered page"
    return _attrs(match.group(1))


def _attrs(text: str) -> dict:
    return {k: v for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', text)}


def assert_clean(dom: str, console: list[str]) -> dict:
    body = body_attrs(dom)
    assert body.get("ready") == "1", f"the page did not finish drawing: {body}"
    assert body.get("errors") == "0", f"uncaught errors: {body.get('error-text')}"
    assert not console, "console output (the page logs nothing when all is well):\n" + "\n".join(console)
    return body


def assert_self_contained(text: str) -> None:
    """Nothing is fetched at view time: no external script, stylesheet, image or font."""
    head = text[:text.index("<script>", text.index("</head>"))] if "</head>" in text else text
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text[:200_000] + text[-300_000:])
    assert "@import" not in head and "url(http" not in head


def pixel_stddev(png: Path) -> float:
    try:
        from PIL import Image, ImageStat
    except ImportError:  # pragma: no cover
        pytest.fail("Pillow is needed to decode the screenshot (pip install pillow; matplotlib "
                    "installs it)", pytrace=False)
    with Image.open(png) as im:
        return ImageStat.Stat(im.convert("L")).stddev[0]


# ------------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def plan_1024():
    return plan("--gpus", "1024", "--params", "175e9")


@pytest.fixture(scope="module")
def plan_131072():
    return plan("--gpus", "131072", "--params", "175e9")


def make_run_dir(root: Path, steps: int = 20, validate: bool = True) -> Path:
    """A synthetic run directory: run.yaml (a small model on dp=2 x pp=2 x tp=2 CPU ranks),
    metrics.jsonl with `steps` steps, validate.json."""
    run = root / "run"
    run.mkdir()
    config = RunConfig()
    config.layout.dp = config.layout.pp = config.layout.tp = 2
    config.layout.grad_accum = 4
    (run / "run.yaml").write_text(dump_run_config(config, header="# synthetic run for tests"))
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "loss": 2 + 6 * math.exp(-s / 8), "lr": 3e-4 * min(1, s / 10),
                                "grad_norm": 0.3 + 2 / s, "tokens_per_s": 3900 + 10 * (s % 3),
                                "tflops_per_gpu": 0.011, "mfu": 0.2, "step_time_s": 0.26 + 0.001 * (s % 4),
                                "memory_gib": 0.58}) + "\n")
    if validate:
        rows = [{"rank": r, "stage": r // 4, "quantity": "memory_gib", "predicted": 0.55,
                 "measured": 0.58, "error_pct": 5.5} for r in range(8)]
        (run / "validate.json").write_text(json.dumps({"rows": rows}))
    return run


# ------------------------------------------------------------------------------------------------
# the data behind the charts

@pytest.mark.parametrize("dp,pp,tp,gpn", [(16, 8, 8, 8), (2, 2, 2, 8), (1, 1, 1, 8), (4, 3, 2, 8),
                                          (3, 2, 16, 8), (1024, 16, 8, 8), (2048, 8, 8, 8),
                                          (5, 3, 4, 4), (1, 4, 2, 3)])
def test_rank_map_covers_every_rank_once(dp, pp, tp, gpn):
    rm = report_html.rank_map(dp, pp, tp, gpn)
    world, per, g = dp * pp * tp, rm["nodes_per_cell"], rm["gpus_per_node"]
    seen = 0
    for y, row in enumerate(rm["z"]):
        assert len(row) == rm["width"]
        for x, stage in enumerate(row):
            col, slot = divmod(x, g + 1)
            unit = col * rm["rows"] + y
            if slot == g or unit >= rm["units"]:
                assert stage is None
                continue
            ranks = [n * g + slot for n in range(unit * per, min(unit * per + per, rm["nodes"]))
                     if n * g + slot < world]
            if not ranks:
                assert stage is None
                continue
            seen += len(ranks)
            stages = {rank_coords(r, dp, pp, tp)[0] for r in ranks}
            assert stage == (stages.pop() if len(stages) == 1 else -1)
    assert seen == world
    cells = sum(v is not None for row in rm["z"] for v in row)
    assert cells <= report_html.MAX_RANK_MAP_CELLS + g


def test_rank_map_aggregates_large_clusters_and_marks_tp_across_nodes():
    big = report_html.rank_map(1024, 16, 8, 8)
    assert big["nodes"] == 16384 and big["nodes_per_cell"] == 32
    assert sum(v is not None for row in big["z"] for v in row) == report_html.MAX_RANK_MAP_CELLS
    assert -1 not in {v for row in big["z"] for v in row}  # stages are 1024-node aligned
    small = report_html.rank_map(16, 8, 8, 8)
    assert small["nodes_per_cell"] == 1 and small["labelled"] and not small["tp_crossing_cells"]
    straddle = report_html.rank_map(2, 2, 16, 8)  # TP of 16 over nodes of 8: every rank crosses
    assert straddle["tp_crosses_nodes"] and len(straddle["tp_crossing_cells"]) == 64
    odd = report_html.rank_map(1, 1, 4, 6)  # 4 ranks per group on nodes of 6: ranks 4..7 straddle
    assert odd["gpus_per_node"] == 4 and not odd["tp_crossing_cells"]  # one node of 4
    odd = report_html.rank_map(3, 1, 4, 6)  # 12 ranks in 2 nodes of 6: group [4..7] crosses
    crossing = {(x, y) for x, y in odd["tp_crossing_cells"]}
    assert crossing == {(4, 0), (5, 0), (0, 1), (1, 1)}


def test_one_f_one_b_matches_the_planners_pipeline_time():
    for p, m in [(1, 1), (1, 8), (4, 4), (4, 16), (8, 3), (16, 16)]:
        f, b = [1.0] * p, [2.0] * p
        ops = report_html.one_f_one_b(f, b, m)
        assert len(ops) == 2 * p * m
        end = max(start + dur for *_, start, dur in ops)
        assert end == pytest.approx(pipeline_time_s([3.0] * p, m))  # (m + p - 1) (f + b)
        by_stage = {}
        for stage, kind, mb, start, dur in ops:
            by_stage.setdefault(stage, []).append((start, dur))
        for spans in by_stage.values():  # a stage runs one thing at a time
            spans.sort()
            assert all(a[0] + a[1] <= b_[0] + 1e-12 for a, b_ in zip(spans, spans[1:]))
        done = {(s, k, mb): start + dur for s, k, mb, start, dur in ops}
        for s, k, mb, start, _ in ops:  # dependencies
            if k == "F" and s > 0:
                assert start >= done[(s - 1, "F", mb)] - 1e-12
            if k == "B":
                assert start >= done[(s + 1, "B", mb) if s < p - 1 else (s, "F", mb)] - 1e-12


def test_schedule_splits_stage_time_and_caps_micro_batches(plan_1024):
    inputs, _, chosen = plan_1024
    lay = chosen.layout
    sch = report_html.schedule(inputs.spec, inputs.cluster, chosen, inputs.options)
    times = report_html.stage_times(inputs.spec, inputs.cluster, lay, inputs.options, chosen.stages)
    for f, b, t in zip(sch.fwd, sch.bwd, times):
        assert f + b == pytest.approx(t.total_s)
        assert f / (f + b) == pytest.approx(1 / 3, abs=0.05)
    slowest = max(t.total_s for t in times)  # the planner's compute + TP + PP for m micro-batches
    assert slowest * lay.grad_accum == pytest.approx(
        chosen.step.compute_s + chosen.step.tp_comm_s + chosen.step.pp_comm_s)
    assert sch.drawn == min(lay.grad_accum, report_html.MAX_DRAWN_MICRO_BATCHES) == 32
    assert len(sch.ops) == 2 * lay.pp * sch.drawn
    assert sch.idle, "a pipeline has a bubble"
    assert report_html.drawn_micro_batches(96, 1000) * 2 * 96 <= report_html.MAX_SCHEDULE_OPS
    assert report_html.drawn_micro_batches(1, 3) == 3


def test_figures_are_valid_plotly(plan_1024):
    go = pytest.importorskip("plotly.graph_objects")
    inputs, _, chosen = plan_1024
    lay = chosen.layout
    rm = report_html.rank_map(lay.dp, lay.pp, lay.tp, inputs.cluster.gpus_per_node)
    sch = report_html.schedule(inputs.spec, inputs.cluster, chosen, inputs.options)
    for fig in (report_html.rank_map_figure(rm), report_html.schedule_figure(sch, chosen.step.total_s),
                report_html.breakdown_figure(chosen.step),
                report_html.memory_figure(chosen.stages, inputs.cluster.gpu.memory_gib),
                report_html.metric_figure([1, 2], [3.0, 2.5], "loss", "", predicted=2.0, capacity=4)):
        go.Figure(fig)  # raises on any property plotly does not know


def test_report_module_imports_no_plotting_library():
    code = ("import sys, llmlaunch.report_html, llmlaunch.report_png; "
            "bad = [m for m in ('plotly', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------------------------
# pages in a real browser

def test_plan_page_1024_gpus_in_browser(plan_1024, tmp_path):
    inputs, result, chosen = plan_1024
    lay = chosen.layout
    page = tmp_path / "plan.html"
    report_html.write_plan_report(page, inputs, result, chosen)
    text = page.read_text()
    assert_self_contained(text)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    dom, console = dump_dom(page, tmp_path / "profile")
    body = assert_clean(dom, console)
    assert body["plots"] == "4"
    rm = section_attrs(dom, "rank-map")
    assert rm["ranks"] == rm["rendered-ranks"] == str(lay.dp * lay.pp * lay.tp) == "1024"
    assert rm["nodes-per-cell"] == "1" and rm["rendered-cells"] == "1024"
    sch = section_attrs(dom, "schedule")
    assert sch["stages"] == sch["rendered-stages"] == str(lay.pp)
    assert sch["micro-batches"] == str(lay.grad_accum)
    drawn = min(lay.grad_accum, report_html.MAX_DRAWN_MICRO_BATCHES)
    assert sch["micro-batches-drawn"] == sch["rendered-micro-batches"] == str(drawn)
    assert sch["rendered-ops"] == str(2 * lay.pp * drawn)
    assert f"Drawn: {drawn} of m = {lay.grad_accum} micro-batches" in dom
    assert section_attrs(dom, "memory")["stages"] == str(lay.pp)
    cands = section_attrs(dom, "candidates")
    assert cands["rows"] == str(min(len(result.candidates), report_html.MAX_TABLE_ROWS))
    assert section_attrs(dom, "inputs")["defaults"] == str(len(inputs.defaults))
    for note in inputs.defaults:
        assert report_html.html.escape(note, quote=False) in dom
    for unit in ("mem GiB", "step s", "tokens/s", "TFLOP/s/GPU", "GiB", "memory per GPU (GiB)"):
        assert unit in dom
    assert dom.count('class="heatmap-label"') == 1024  # every rank labelled (TP group, replica)
    shot = screenshot(page, tmp_path / "profile2", tmp_path / "plan.png")
    assert pixel_stddev(shot) > 20, "the screenshot is blank"


def test_small_plan_page_labels_and_sorting_in_browser(tmp_path):
    inputs, result, chosen = plan("--gpus", "16", "--params", "1.3e9", "--tp", "2", "--pp", "2")
    page = tmp_path / "small.htm"
    report_html.write_plan_report(page, inputs, result, chosen)
    # click the "mem GiB" header twice (descending) and record the first row's value
    mem_col = report_html.html.escape("mem GiB")
    harness = ("<script>(function(){var t=document.querySelector('#candidates table');"
               "var ths=t.tHead.rows[0].cells,i;for(i=0;i<ths.length;i++)if(ths[i].textContent==="
               f"'{mem_col}')break;ths[i].click();var asc=t.tBodies[0].rows[0].cells[i].dataset.v;"
               "ths[i].click();var desc=t.tBodies[0].rows[0].cells[i].dataset.v;"
               "document.body.dataset.sortAsc=asc;document.body.dataset.sortDesc=desc;"
               "document.body.dataset.sortAria=ths[i].getAttribute('aria-sort');})();</script>")
    page.write_text(page.read_text().replace("</body>", harness + "</body>"))
    dom, console = dump_dom(page, tmp_path / "profile")
    body = assert_clean(dom, console)
    mems = [c.worst_stage.total / 2**30 for c in result.candidates]
    assert float(body["sort-asc"]) == pytest.approx(min(mems), rel=1e-4)
    assert float(body["sort-desc"]) == pytest.approx(max(mems), rel=1e-4)
    assert body["sort-aria"] == "descending"
    rm = section_attrs(dom, "rank-map")
    assert rm["rendered-ranks"] == "16"
    assert dom.count('class="heatmap-label"') == 16
    assert ">t0</tspan>" in dom and ">d1</tspan>" in dom  # TP group and DP replica on the cells
    sch = section_attrs(dom, "schedule")
    drawn = min(chosen.layout.grad_accum, report_html.MAX_DRAWN_MICRO_BATCHES)
    assert sch["rendered-stages"] == "2" and sch["rendered-micro-batches"] == str(drawn)


def test_pinned_layout_across_nodes_and_no_fit_pages_in_browser(tmp_path):
    # TP over two nodes, pinned: estimated, ruled out, drawn with the crossing ranks marked
    inputs, result, chosen = plan("--gpus", "16", "--gpus-per-node", "4", "--params", "1.3e9",
                                  "--tp", "8", "--pp", "2", "--dp", "1", "--micro-batch", "1",
                                  "--zero", "1", "--recompute", "none", "--global-batch", "8")
    assert chosen is not None and not chosen.fits
    page = tmp_path / "pinned.html"
    report_html.write_plan_report(page, inputs, result, chosen)
    text = page.read_text()
    assert "This layout does not fit" in text and "TP would straddle nodes" in text
    assert "TP group crosses a node" in text
    dom, console = dump_dom(page, tmp_path / "p1")
    assert_clean(dom, console)
    assert section_attrs(dom, "rank-map")["rendered-ranks"] == "16"
    assert dom.count('class="point"') >= 16  # a marker on every rank: each TP group spans 2 nodes
    # nothing fits: the page still opens, with the ruled-out layouts
    inputs, result, chosen = plan("--gpus", "8", "--params", "175e9")
    assert chosen is None
    page = tmp_path / "nofit.html"
    report_html.write_plan_report(page, inputs, result, chosen)
    dom, console = dump_dom(page, tmp_path / "p2")
    body = assert_clean(dom, console)
    assert body["plots"] == "0" and 'id="rank-map"' not in dom
    assert "Ruled-out layouts" in dom and "None of the" in dom


def test_plan_page_131072_gpus_stays_small_and_renders(plan_131072, tmp_path):
    inputs, result, chosen = plan_131072
    page = tmp_path / "big.html"
    report_html.write_plan_report(page, inputs, result, chosen)
    size = page.stat().st_size
    assert size < SIZE_LIMIT, f"{size} bytes"
    dom, console = dump_dom(page, tmp_path / "profile")
    assert_clean(dom, console)
    rm = section_attrs(dom, "rank-map")
    assert rm["ranks"] == rm["rendered-ranks"] == "131072"
    assert int(rm["nodes-per-cell"]) > 1 and int(rm["rendered-cells"]) <= report_html.MAX_RANK_MAP_CELLS
    sch = section_attrs(dom, "schedule")
    assert sch["rendered-stages"] == str(chosen.layout.pp)


def test_run_report_in_browser(tmp_path):
    run = make_run_dir(tmp_path)
    parser = argparse.ArgumentParser()
    report_html.add_report_arguments(parser)
    assert report_html.run_report(parser.parse_args([str(run)])) == 0
    page = run / "report.html"
    assert page.is_file()
    assert_self_contained(page.read_text())
    dom, console = dump_dom(page, tmp_path / "profile")
    body = assert_clean(dom, console)
    assert body["plots"] == "10"  # 6 metrics + rank map, schedule, breakdown, memory
    assert section_attrs(dom, "metrics") == {**section_attrs(dom, "metrics"), "steps": "20", "plots": "6"}
    assert section_attrs(dom, "predicted")["rows"] == "5"
    assert section_attrs(dom, "validate")["rows"] == "8"
    assert section_attrs(dom, "rank-map")["rendered-ranks"] == "8"
    sch = section_attrs(dom, "schedule")
    assert sch["rendered-stages"] == "2" and sch["rendered-micro-batches"] == "4"
    for quantity in ("step time", "throughput", "memory per GPU (peak)", "tokens/s", "GiB"):
        assert quantity in dom
    # --out elsewhere, and a PNG
    out = tmp_path / "elsewhere.html"
    assert report_html.write_run_report(run, out) == out and out.stat().st_size > 1_000_000
    png = report_html.write_run_report(run, tmp_path / "run.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# PNG, errors, atomic writes

def test_plan_png(plan_1024, tmp_path):
    inputs, result, chosen = plan_1024
    out = tmp_path / "plan.png"
    report_html.write_plan_report(out, inputs, result, chosen)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 1_000_000
    assert pixel_stddev(out) > 20
    nofit = tmp_path / "nofit.png"
    report_html.write_report(nofit, inputs, planner.SearchResult([], [], 0), None)
    assert nofit.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_paths_and_run_dirs_raise_value_errors(plan_1024, tmp_path):
    inputs, result, chosen = plan_1024
    with pytest.raises(ValueError, match=r"\.html or \.png"):
        report_html.write_plan_report(tmp_path / "plan.pdf", inputs, result, chosen)
    with pytest.raises(ValueError, match="does not exist"):
        report_html.write_plan_report(tmp_path / "missing" / "plan.html", inputs, result, chosen)
    with pytest.raises(ValueError, match="not a run directory"):
        report_html.write_run_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run.yaml"):
        report_html.write_run_report(tmp_path / "empty")
    run = make_run_dir(tmp_path, steps=3, validate=False)
    with pytest.raises(ValueError, match=r"\.html or \.png"):
        report_html.write_run_report(run, tmp_path / "x.txt")
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match="line 4 is not JSON"):
        report_html.write_run_report(run)
    (run / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match="'step'"):
        report_html.write_run_report(run)
    (run / "metrics.jsonl").unlink()
    (run / "validate.json").write_text('{"rows": 3}')
    with pytest.raises(ValueError, match="validate.json"):
        report_html.write_run_report(run)
    (run / "validate.json").unlink()
    out = report_html.write_run_report(run)  # no metrics yet: the page says so
    assert "No metrics.jsonl" in out.read_text()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    target.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    from llmlaunch import atomic

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError):
        atomic.write_bytes_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
