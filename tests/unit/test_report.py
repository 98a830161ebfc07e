"""The HTML/PNG plan and run reports (llmlaunch.report): the data behind the charts, the PNG, and
the errors; tests/browser/test_report_pages.py renders the pages in a real browser."""
from __future__ import annotations

import subprocess
import sys

import pytest

from browser import pixel_stddev  # tests/helpers
from report_runs import make_run_dir
from llmlaunch.report import figures, plan_page, rank_map, run_page
from llmlaunch.topology import schedule
from llmlaunch.topology.layout import Layout
from llmlaunch.topology.planner import SearchResult

SIZE_LIMIT = 5_000_000  # bytes: the page for 131072 GPUs stays under 5 MB



# ------------------------------------------------------------------------------------------------
# the data behind the charts

@pytest.mark.parametrize("dp,pp,tp,gpn", [(16, 8, 8, 8), (2, 2, 2, 8), (1, 1, 1, 8), (4, 3, 2, 8),
                                          (3, 2, 16, 8), (1024, 16, 8, 8), (2048, 8, 8, 8),
                                          (5, 3, 4, 4), (1, 4, 2, 3)])
def test_rank_map_covers_every_rank_once(dp, pp, tp, gpn):
    rm = rank_map.rank_map(Layout(dp=dp, pp=pp, tp=tp), gpn)
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
            stages = {Layout(dp=dp, pp=pp, tp=tp).coords(r)["pp"] for r in ranks}
            assert stage == (stages.pop() if len(stages) == 1 else -1)
    assert seen == world
    cells = sum(v is not None for row in rm["z"] for v in row)
    assert cells <= rank_map.MAX_RANK_MAP_CELLS + g


def test_rank_map_aggregates_large_clusters_and_marks_tp_across_nodes():
    big = rank_map.rank_map(Layout(dp=1024, pp=16, tp=8), 8)
    assert big["nodes"] == 16384 and big["nodes_per_cell"] == 32
    assert sum(v is not None for row in big["z"] for v in row) == rank_map.MAX_RANK_MAP_CELLS
    assert -1 not in {v for row in big["z"] for v in row}  # stages are 1024-node aligned
    small = rank_map.rank_map(Layout(dp=16, pp=8, tp=8), 8)
    assert small["nodes_per_cell"] == 1 and small["labelled"] and not small["tp_crossing_cells"]
    straddle = rank_map.rank_map(Layout(dp=2, pp=2, tp=16), 8)  # TP of 16 over nodes of 8: every rank crosses
    assert straddle["tp_crosses_nodes"] and len(straddle["tp_crossing_cells"]) == 64
    odd = rank_map.rank_map(Layout(dp=1, pp=1, tp=4), 6)  # 4 ranks per group on nodes of 6: ranks 4..7 straddle
    assert odd["gpus_per_node"] == 4 and not odd["tp_crossing_cells"]  # one node of 4
    odd = rank_map.rank_map(Layout(dp=3, pp=1, tp=4), 6)  # 12 ranks in 2 nodes of 6: group [4..7] crosses
    crossing = {(x, y) for x, y in odd["tp_crossing_cells"]}
    assert crossing == {(4, 0), (5, 0), (0, 1), (1, 1)}


def test_figures_are_valid_plotly(plan_1024):
    go = pytest.importorskip("plotly.graph_objects")
    inputs, _, chosen = plan_1024
    lay = chosen.layout
    rm = rank_map.rank_map(Layout(dp=lay.dp, pp=lay.pp, tp=lay.tp), inputs.cluster.gpus_per_node)
    sch = schedule.candidate_schedule(chosen)
    for fig in (figures.rank_map_figure(rm), figures.schedule_figure(sch, chosen.step.total_s),
                figures.breakdown_figure(chosen.step),
                figures.memory_figure(chosen.stages, inputs.cluster.gpu.memory_gib),
                figures.metric_figure([1, 2], [3.0, 2.5], "loss", "", predicted=2.0, capacity=4)):
        go.Figure(fig)  # raises on any property plotly does not know


def test_report_module_imports_no_plotting_library():
    code = ("import sys, llmlaunch.report.plan_page, llmlaunch.report.run_page, llmlaunch.report.png; "
            "bad = [m for m in ('plotly', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_plan_png(plan_1024, tmp_path):
    inputs, result, chosen = plan_1024
    out = tmp_path / "plan.png"
    plan_page.write_plan_report(out, inputs, result, chosen)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 1_000_000
    assert pixel_stddev(out) > 20
    nofit = tmp_path / "nofit.png"
    plan_page.write_plan_report(nofit, inputs, SearchResult([], [], 0), None)
    assert nofit.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_paths_and_run_dirs_raise_value_errors(plan_1024, tmp_path):
    inputs, result, chosen = plan_1024
    with pytest.raises(ValueError, match=r"\.html or \.png"):
        plan_page.write_plan_report(tmp_path / "plan.pdf", inputs, result, chosen)
    with pytest.raises(ValueError, match="does not exist"):
        plan_page.write_plan_report(tmp_path / "missing" / "plan.html", inputs, result, chosen)
    with pytest.raises(ValueError, match="not a run directory"):
        run_page.write_run_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run.yaml"):
        run_page.write_run_report(tmp_path / "empty")
    run = make_run_dir(tmp_path, steps=3, validate=False)
    with pytest.raises(ValueError, match=r"\.html or \.png"):
        run_page.write_run_report(run, tmp_path / "x.txt")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')        # torn by a crash mid-write: the trainer's reader skips
    assert 'data-steps="3"' in run_page.write_run_report(run).read_text()   # it, and so does report
    with open(run / "metrics.jsonl", "a") as f:
        f.write('\n{"step": 5, "loss": 1.0}\n')   # then a line after it: the file is damaged
    with pytest.raises(ValueError, match="line 4 is not JSON"):
        run_page.write_run_report(run)
    (run / "metrics.jsonl").write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match="'step'"):
        run_page.write_run_report(run)
    (run / "metrics.jsonl").unlink()
    (run / "validate.json").write_text('{"rows": 3}')
    with pytest.raises(ValueError, match="validate.json"):
        run_page.write_run_report(run)
    (run / "validate.json").unlink()
    out = run_page.write_run_report(run)  # no metrics yet: the page says so
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
