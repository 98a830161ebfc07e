"""The planner against published large training runs (topology/data/published_runs.yaml).

Each run's layout is pinned as published and priced for the engine that ran it; the planner must
judge it as fitting and estimate its TFLOP/s per GPU within 20% of the reported figure, unless the
row is listed as a known gap (with the reason). The table is in docs/validation.md
(benchmarks/published_runs.py prints it)."""
import pytest

from llmlaunch.topology.engines import ENGINES
from llmlaunch.topology.flops import megatron_iteration_flops
from llmlaunch.topology.published import (error, evaluate_run, fully_sourced, load_runs, pearson,
                                          published_tflops, summary)

RUNS = load_runs()
# Runs whose schedule or parallelism the estimator does not model, or that it misses, are listed,
# not hidden.
KNOWN_GAPS = {r["name"] for r in RUNS if r.get("known_gap")}


def test_at_least_five_published_runs_are_checked():
    assert len([r for r in RUNS if r["name"] not in KNOWN_GAPS]) >= 5


def test_every_row_names_its_engine_and_where_its_layout_comes_from():
    for run in RUNS:
        assert run["engine"] in ENGINES, run["name"]
        assert run.get("layout_source") or run.get("assumed"), run["name"]


@pytest.mark.parametrize("run", [r for r in RUNS if r["name"] not in KNOWN_GAPS], ids=lambda r: r["name"])
def test_published_run_fits_and_matches_throughput(run):
    cand = evaluate_run(run)
    assert cand.fits, cand.reasons
    assert cand.tflops_per_gpu == pytest.approx(published_tflops(run), rel=0.20)


def test_published_tflops_from_an_iteration_time():
    """BLOOM's log at iteration 85376: 104.70 s for 2048 x 2048 tokens on 384 GPUs; eq. (3) with
    V = 250880 gives 6.021e18 FLOPs, 149.76 TFLOP/s per GPU (the log printed 149.77)."""
    bloom = next(r for r in RUNS if r["name"] == "bloom-176b")
    flops = megatron_iteration_flops(2048, 2048, 70, 14336, 250880)
    assert flops == pytest.approx(6.021e18, rel=1e-3)
    assert published_tflops(bloom) == pytest.approx(flops / 104.70 / 384 / 1e12)
    assert published_tflops(bloom) == pytest.approx(149.77, abs=0.02)


def test_summary_and_correlation_hand_values():
    assert summary([0.1, -0.3, 0.05]) == pytest.approx({"runs": 3, "mape": 0.15, "worst": -0.3})
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [1, 0, 1]) == pytest.approx(0.0)


def test_fully_sourced_rows_stay_where_docs_validation_says():
    """A regression guard on the table docs/validation.md shows: the fully sourced rows' MAPE
    (6.7%, under the issue's 8%), worst error (+12.7%) and correlation of error with width (-0.36:
    the narrow rows are all Narayanan et al.'s 2021 runs, which stay 8-13% fast while the 2022
    Korthikanti runs are within 6%; docs/validation.md says what is still missing)."""
    runs = [r for r in RUNS if fully_sourced(r)]
    errors = [error(r, evaluate_run(r)) for r in runs]
    assert len(errors) >= 19
    s = summary(errors)
    assert s["mape"] < 0.075 and abs(s["worst"]) < 0.15
    assert abs(pearson([r["model"]["hidden"] for r in runs], errors)) < 0.45
