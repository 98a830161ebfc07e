"""The planner against published runs of 2023 and later on H100 or newer
(topology/data/modern_runs.yaml, docs/validation.md; benchmarks/published_runs.py prints the table).

Each run is pinned to its published layout and priced with the engine that ran it: every run must
be judged to fit, the tokens/s per GPU within 10% on average and 25% at worst (known gaps, with
their reason, apart), and a measured memory peak within 15%."""
import pytest

from llmlaunch.topology.engines import ENGINES
from llmlaunch.topology.hardware import gpu
from llmlaunch.topology.published import (error, evaluate_run, fully_sourced, load_modern_runs,
                                          load_runs, memory_error, summary)

RUNS = load_modern_runs()
SCORED = [r for r in RUNS if not r.get("known_gap")]


@pytest.fixture(scope="module")
def priced():
    return {run["name"]: evaluate_run(run) for run in RUNS}


def test_the_table_spans_todays_runs():
    """At least 15 scored rows: dense and MoE, bf16 and FP8, context parallelism, FSDP and
    Megatron-Core, H100 and Blackwell; each row names its source, engine and where its layout
    comes from."""
    assert len(SCORED) >= 15
    for run in RUNS:
        assert run["engine"] in ENGINES, run["name"]
        assert run["source"] and run["layout_source"], run["name"]
        assert gpu(run["gpu"]).name == run["gpu"]
    engines = {r["engine"] for r in SCORED}
    assert {"megatron-core", "llm-foundry"} <= engines and "fsdp" in {r["engine"] for r in RUNS}
    assert {r["precision"] for r in SCORED} == {"bf16", "fp8"}
    assert any(r["model"].get("experts") for r in SCORED)
    # DeepSeek-V3 at scale: node-limited routing through DeepEP (Megatron-Bridge 25.09, 1024 H100)
    assert any(r["model"].get("expert_groups_per_token") and r["engine"] == "megatron-core-deepep"
               and r["gpus"] >= 1024 for r in SCORED)
    assert any(r["layout"].get("cp", 1) > 1 for r in SCORED)
    assert any(r["layout"]["zero_stage"] == 3 for r in SCORED)
    assert {"h100-80gb", "h200-141gb", "b200-180gb", "gb200-186gb"} <= {r["gpu"] for r in SCORED}
    # every row of torchtitan's six H100 tables, each with its measured memory
    titan = [r for r in RUNS if r["gpu"] == "h100-96gb"]
    assert len(titan) == 3 + 4 + 3 + 2 + 2 + 4 and all(r.get("memory_gib") for r in titan)
    assert {r["engine"] for r in titan} == {"fsdp", "fsdp-compile", "fsdp-compile-async-tp"}


def test_every_run_that_ran_fits(priced):
    for run in RUNS:
        assert priced[run["name"]].fits, (run["name"], priced[run["name"]].reasons)


def test_throughput_mape_under_10_percent_none_over_25(priced):
    errors = {r["name"]: error(r, priced[r["name"]]) for r in SCORED}
    s = summary(list(errors.values()))
    assert s["mape"] <= 0.10, errors
    assert all(abs(e) <= 0.25 for e in errors.values()), errors


def test_torchtitan_llama31_8b_memory_within_15_percent(priced):
    """torchtitan's Llama 3.1 8B (FSDP over 8 H100, seq 8192, local batch 2, selective AC):
    82.4 GiB measured (benchmarks/llama3_h100_202412_torchtitan.md); it fits in the 89.4 GiB
    H100 96GB and the estimate is within 15% of the measured peak."""
    run = next(r for r in RUNS if r["name"] == "torchtitan-llama31-8b-fsdp")
    assert run["memory_gib"] == 82.4 and run["tokens_per_s_per_gpu"] == 5762
    cand = priced[run["name"]]
    assert cand.fits
    assert abs(memory_error(run, cand)) <= 0.15


def test_torchtitans_pipelined_405b_memory_within_22_percent(priced):
    """torchtitan's Llama 3.1 405B under FSDP x TP x PP (Tables 5 and 6: 72.7 to 84.9 GiB
    measured): with the stage's unsharded fp32 gradient that FSDP2 keeps across a pipeline's
    micro-batches in place of the sharded one (memory.fsdp_unsharded_bytes) every row is within 22%
    of its measured peak and 15% on average (it was 36-47% under without it), and each still fits."""
    rows = [r for r in RUNS if r["gpu"] == "h100-96gb" and r["model"]["layers"] == 126]
    assert len(rows) == 6
    errors = [memory_error(run, priced[run["name"]]) for run in rows]
    assert all(priced[run["name"]].fits for run in rows)
    assert all(abs(e) <= 0.22 for e in errors) and sum(map(abs, errors)) / len(errors) <= 0.15, errors


def test_the_2021_22_table_does_not_get_worse():
    """The fully sourced rows of published_runs.yaml stay at or under 8% MAPE."""
    runs = [r for r in load_runs() if fully_sourced(r)]
    assert summary([error(r, evaluate_run(r)) for r in runs])["mape"] <= 0.08


def test_torchtitans_h100_gap_is_the_power_limit(priced):
    """The evidence the known gap rests on (docs/validation.md): on torchtitan's 500 W H100s every
    8k-token row, eager, compiled or Float8, on 8 or 128 GPUs, runs at 0.68 to 0.81 of the estimate
    (one factor within 10% of their mean), while the same stack at 8k on 700 W H200s (compile,
    Float8, FSDP) is estimated within 5%: the software model holds, the 500 W clocks are not in
    the catalog."""
    def measured_over_estimated(run):
        return 1 / (1 + error(run, priced[run["name"]]))

    short = [r for r in RUNS if r["gpu"] == "h100-96gb" and r["model"]["seq_len"] == 8192
             and r["model"]["layers"] == 32]
    assert len(short) == 6 and {r["engine"] for r in short} == {"fsdp", "fsdp-compile"}
    ratios = [measured_over_estimated(r) for r in short]
    mean = sum(ratios) / len(ratios)
    assert all(0.65 <= x <= 0.85 and abs(x / mean - 1) <= 0.10 for x in ratios), ratios
    h200 = [r for r in SCORED if r["gpu"] == "h200-141gb"]
    assert len(h200) == 2 and all(abs(error(r, priced[r["name"]])) <= 0.05 for r in h200)
