"""The plan and run pages as a real headless browser (Debian's chromium) renders them: no errors,
every rank on the rank map, every stage and the drawn micro-batches on the schedule, a non-blank
screenshot.

These tests need `chromium` (apt-get install -y chromium); without it they FAIL, they do not skip.
Counts are read from the DOM the page leaves after drawing (data-* attributes, see the module
docstring of llmlaunch.report)."""
from __future__ import annotations

import argparse
import html

import pytest

from browser import (assert_clean, assert_self_contained, dump_dom, pixel_stddev,  # tests/helpers
                     screenshot, section_attrs)
from llmlaunch.cli.plan import plan_from_argv
from llmlaunch.report import plan_page, rank_map, run_page, sections
from llmlaunch.topology import schedule
from report_runs import make_run_dir

SIZE_LIMIT = 5_000_000  # bytes: the page for 131072 GPUs stays under 5 MB



def test_plan_page_1024_gpus_in_browser(plan_1024, tmp_path):
    inputs, result, chosen = plan_1024
    lay = chosen.layout
    page = tmp_path / "plan.html"
    plan_page.write_plan_report(page, inputs, result, chosen)
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
    drawn = min(lay.grad_accum, schedule.MAX_DRAWN_MICRO_BATCHES)
    assert sch["micro-batches-drawn"] == sch["rendered-micro-batches"] == str(drawn)
    assert sch["rendered-ops"] == str(2 * lay.pp * drawn)
    assert (f"Drawn: {drawn} of m = {lay.grad_accum} micro-batches" if drawn < lay.grad_accum
            else f"All m = {lay.grad_accum} micro-batches drawn") in dom
    assert section_attrs(dom, "memory")["stages"] == str(lay.pp)
    cands = section_attrs(dom, "candidates")
    assert cands["rows"] == str(min(len(result.candidates), sections.MAX_TABLE_ROWS))
    assert section_attrs(dom, "inputs")["defaults"] == str(len(inputs.defaults))
    for note in inputs.defaults:
        assert html.escape(note, quote=False) in dom
    for unit in ("mem GiB", "step s", "tokens/s", "TFLOP/s/GPU", "GiB", "memory per GPU (GiB)"):
        assert unit in dom
    assert dom.count('class="heatmap-label"') == 1024  # every rank labelled (TP group, replica)
    shot = screenshot(page, tmp_path / "profile2", tmp_path / "plan.png")
    assert pixel_stddev(shot) > 20, "the screenshot is blank"


def test_small_plan_page_labels_and_sorting_in_browser(tmp_path):
    inputs, result, chosen = plan_from_argv(["--gpus", "16", "--params", "1.3e9", "--tp", "2", "--pp", "2"])
    page = tmp_path / "small.htm"
    plan_page.write_plan_report(page, inputs, result, chosen)
    # click the "mem GiB" header twice (descending) and record the first row's value
    mem_col = html.escape("mem GiB")
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
    drawn = min(chosen.layout.grad_accum, schedule.MAX_DRAWN_MICRO_BATCHES)
    assert sch["rendered-stages"] == "2" and sch["rendered-micro-batches"] == str(drawn)


def test_pinned_layout_across_nodes_and_no_fit_pages_in_browser(tmp_path):
    # TP over two nodes, pinned: estimated, ruled out, drawn with the crossing ranks marked
    inputs, result, chosen = plan_from_argv(["--gpus", "16", "--gpus-per-node", "4", "--params",
                                             "1.3e9", "--tp", "8", "--pp", "2", "--dp", "1",
                                             "--micro-batch", "1", "--zero", "1", "--recompute",
                                             "none", "--global-batch", "8"])
    assert chosen is not None and not chosen.fits
    page = tmp_path / "pinned.html"
    plan_page.write_plan_report(page, inputs, result, chosen)
    text = page.read_text()
    assert "This layout does not fit" in text and "TP would straddle nodes" in text
    assert "TP group crosses a node" in text
    dom, console = dump_dom(page, tmp_path / "p1")
    assert_clean(dom, console)
    assert section_attrs(dom, "rank-map")["rendered-ranks"] == "16"
    assert dom.count('class="point"') >= 16  # a marker on every rank: each TP group spans 2 nodes
    # nothing fits: the page still opens, with the ruled-out layouts
    inputs, result, chosen = plan_from_argv(["--gpus", "8", "--params", "175e9"])
    assert chosen is None
    page = tmp_path / "nofit.html"
    plan_page.write_plan_report(page, inputs, result, chosen)
    dom, console = dump_dom(page, tmp_path / "p2")
    body = assert_clean(dom, console)
    assert body["plots"] == "0" and 'id="rank-map"' not in dom
    assert "Ruled-out layouts" in dom and "None of the" in dom


def test_plan_page_131072_gpus_stays_small_and_renders(plan_131072, tmp_path):
    inputs, result, chosen = plan_131072
    page = tmp_path / "big.html"
    plan_page.write_plan_report(page, inputs, result, chosen)
    size = page.stat().st_size
    assert size < SIZE_LIMIT, f"{size} bytes"
    dom, console = dump_dom(page, tmp_path / "profile")
    assert_clean(dom, console)
    rm = section_attrs(dom, "rank-map")
    assert rm["ranks"] == rm["rendered-ranks"] == "131072"
    assert int(rm["nodes-per-cell"]) > 1 and int(rm["rendered-cells"]) <= rank_map.MAX_RANK_MAP_CELLS
    sch = section_attrs(dom, "schedule")
    assert sch["rendered-stages"] == str(chosen.layout.pp)


def test_run_report_in_browser(tmp_path):
    run = make_run_dir(tmp_path)
    parser = argparse.ArgumentParser()
    from llmlaunch.cli import report as report_command

    sub = parser.add_subparsers()
    report_command.register(sub)
    assert report_command.run_report(parser.parse_args(["report", str(run)])) == 0
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
    assert run_page.write_run_report(run, out) == out and out.stat().st_size > 1_000_000
    png = run_page.write_run_report(run, tmp_path / "run.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# PNG, errors, atomic writes
