"""`llmlaunch validate`: real DeepSpeed ranks on CPU (gloo) measured against the planner.

Each layout is launched once (module-scoped cache) through `run_validate`, as the CLI calls it, in
its own session; the whole process group is killed when the launch ends. Together the layouts cover
pp > 1 (up to 4 stages), tp > 1, dp > 1, ZeRO 0 and 1, every recompute mode, gpt2 and llama (GQA),
fp32 and bf16.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmlaunch.launcher.validate import MOE_QUANTITIES, QUANTITIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # rank_harness
from rank_harness import kill_session  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "llmlaunch" / "configs" / "tiny-cpu.yaml"
RUNNER = ("import argparse, sys\n"
          "from llmlaunch.cli.validate import add_validate_arguments, run_validate\n"
          "p = argparse.ArgumentParser(prog='llmlaunch validate')\n"
          "add_validate_arguments(p)\n"
          "sys.exit(run_validate(p.parse_args(sys.argv[1:])))\n")

# name: (--set overrides on tiny-cpu, JSON output?)
LAYOUTS = {
    "dp2-pp2-tp1-zero1-none": ([], False),                      # tiny-cpu as shipped
    "dp1-pp2-tp2-zero0-selective": (["layout.dp=1", "layout.tp=2", "layout.zero_stage=0",
                                     "layout.recompute=selective"], True),
    "dp2-pp1-tp2-zero1-full": (["layout.pp=1", "layout.tp=2", "layout.recompute=full"], True),
    "llama-gqa-dp1-pp2-tp2-zero1-none": (["model.arch=llama", "model.kv_heads=2", "layout.dp=1",
                                          "layout.tp=2"], True),
    "dp1-pp4-tp1-zero0-full": (["layout.dp=1", "layout.pp=4", "layout.zero_stage=0",
                                "layout.recompute=full"], True),
    # bf16 on CPU runs DeepSpeed's BF16_Optimizer, the GPU path: bf16 .grad beside the fp32
    # accumulation, fp32 master + Adam states sharded by ZeRO-1
    "bf16-dp2-pp2-tp1-zero1-none": (["train.precision=bf16"], True),
    "bf16-llama-dp1-pp2-tp2-zero1-selective": (["train.precision=bf16", "model.arch=llama",
                                                "model.kv_heads=2", "layout.dp=1", "layout.tp=2",
                                                "layout.recompute=selective"], True),
    # DeepSpeed's plain engine (pp = 1) at ZeRO-3 over 4 ranks: weights partitioned too (issue 13)
    "dp4-pp1-tp1-zero3-none": (["layout.dp=4", "layout.pp=1", "layout.zero_stage=3",
                                "layout.grad_accum=2"], False),
}
MODEL_STATES = ("weights", "gradients", "optimizer")
ROW_KEYS = {"rank", "stage", "quantity", "predicted", "measured", "error_pct"}


def launch(run_dir: Path, sets: list[str], as_json: bool, steps: int = 3) -> dict:
    cmd = [sys.executable, "-c", RUNNER, "--config", str(TINY), "--run-dir", str(run_dir),
           "--steps", str(steps)]
    for item in sets:
        cmd += ["--set", item]
    if as_json:
        cmd.append("--json")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 0, stderr[-3000:]
    return {"stdout": stdout, "file": json.loads((run_dir / "validate.json").read_text())}


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            sets, as_json = LAYOUTS[name]
            cache[name] = launch(tmp_path_factory.mktemp(name) / "run", sets, as_json)
        return cache[name]
    return get


def layout_of(name):
    """dp, pp, tp of a LAYOUTS entry (the name spells them)."""
    parts = dict((p[:2], int(p[2:])) for p in name.split("-") if p[:2] in ("dp", "pp", "tp")
                 and p[2:].isdigit())
    return parts["dp"], parts["pp"], parts["tp"]


def rows_of(result):
    return result["file"]["rows"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_model_states_within_one_percent(validated, name):
    rows = [r for r in rows_of(validated(name)) if r["quantity"] in MODEL_STATES]
    dp, pp, tp = layout_of(name)
    assert len(rows) == 3 * dp * pp * tp
    for row in rows:
        assert row["measured"] > 0
        assert abs(row["measured"] - row["predicted"]) <= 0.01 * row["predicted"], row


@pytest.mark.parametrize("name", LAYOUTS)
def test_activations_within_ten_percent(validated, name):
    rows = [r for r in rows_of(validated(name)) if r["quantity"] == "activations"]
    dp, pp, tp = layout_of(name)
    assert len(rows) == dp * pp * tp
    for row in rows:
        assert abs(row["measured"] - row["predicted"]) <= 0.10 * row["predicted"], row


@pytest.mark.parametrize("name", LAYOUTS)
def test_rows_schema_and_rank_coverage(validated, name):
    result = validated(name)
    dp, pp, tp = layout_of(name)
    rows = rows_of(result)
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["quantity"] in QUANTITIES
        assert isinstance(row["rank"], int) and isinstance(row["stage"], int)
        assert row["predicted"] > 0 and row["measured"] > 0
        assert row["error_pct"] == pytest.approx(100 * (row["measured"] / row["predicted"] - 1))
        # DeepSpeed's PipeModelDataParallelTopology: rank = stage * dp * tp + replica * tp + tp rank
        assert row["stage"] == row["rank"] // (dp * tp)
    per_rank = {}
    for row in rows:
        per_rank.setdefault(row["rank"], set()).add(row["quantity"])
    assert sorted(per_rank) == list(range(dp * pp * tp))
    # CPU: no device peak (documented), every other quantity of a dense model on every rank
    for quantities in per_rank.values():
        assert quantities == set(QUANTITIES) - {"peak"} - set(MOE_QUANTITIES)
    expected_precision = "bf16" if name.startswith("bf16") else "fp32"
    assert result["file"]["precision"] == expected_precision and result["file"]["device"] == "cpu"
    # the wrapper the planner's buffer model assumes (topology.memory.buffer_bytes)
    zero = int(name.split("zero")[1][0])
    expected_wrapper = ("DeepSpeedZeroOptimizer_Stage3" if zero == 3 else
                        "BF16_Optimizer" if expected_precision == "bf16" else
                        "DeepSpeedZeroOptimizer" if zero == 1 else None)
    if expected_wrapper:
        assert result["file"]["optimizer_wrapper"] == expected_wrapper
        if not LAYOUTS[name][1]:   # the table names it too
            assert f"optimizer wrapper {expected_wrapper}" in result["stdout"]
    if LAYOUTS[name][1]:
        # --json: stdout is exactly one JSON object, the one written to RUN_DIR/validate.json
        assert json.loads(result["stdout"]) == result["file"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_zero_stage_shows_in_the_engine_tensors(validated, name):
    """Independent of the planner: gradients are full-size (ZeRO 0 and 1 do not partition them):
    4 bytes a parameter in fp32, 2 + 4 in bf16 (BF16_Optimizer's bf16 .grad beside its fp32
    accumulation); the optimizer holds Adam's m and v (8 bytes a parameter), and under ZeRO-1 also
    an fp32 master copy, all partitioned over dp: 12 / dp. ZeRO-3 (fp32) partitions the weights
    (4 / dp) and holds its gradient partition (4 / dp) beside one micro-batch's unreduced
    gradients (4: the tiny model is under one reduce bucket)."""
    dp, _, _ = layout_of(name)
    zero = int(name.split("zero")[1][0])
    bf16 = name.startswith("bf16")
    by_rank = {}
    for row in rows_of(validated(name)):
        by_rank.setdefault(row["rank"], {})[row["quantity"]] = row["measured"]
    for measured in by_rank.values():
        if zero == 3:
            params = measured["weights"] * dp / 4
            assert measured["gradients"] == pytest.approx(4 * params / dp + 4 * params, rel=1e-3)
            assert measured["optimizer"] == pytest.approx(12 * params / dp, rel=1e-3)
            continue
        params = measured["weights"] / (2 if bf16 else 4)
        assert measured["gradients"] == pytest.approx((6 if bf16 else 4) * params, rel=1e-3)
        expected = 8 * params if zero == 0 else 12 * params / dp
        assert measured["optimizer"] == pytest.approx(expected, rel=1e-3)


def test_table_output(validated):
    result = validated("dp2-pp2-tp1-zero1-none")
    out = result["stdout"]
    assert "validate: dp 2 x pp 2 x tp 1" in out
    header = next(line for line in out.splitlines() if "quantity" in line)
    assert header.split() == ["rank", "stage", "quantity", "predicted", "measured", "error"]
    for quantity in ("weights", "gradients", "optimizer", "activations", "step_time_s"):
        assert sum(line.split()[2:3] == [quantity] for line in out.splitlines()) == 4
    assert "validate.json" in out


def test_pipeline_stages_differ_as_the_split_says(validated):
    """pp=4 on 4 layers: one block per stage; the last stage also saves the cross-entropy's softmax
    and holds the head, the first the embedding."""
    rows = rows_of(validated("dp1-pp4-tp1-zero0-full"))
    acts = {r["stage"]: r["measured"] for r in rows if r["quantity"] == "activations"}
    assert acts[3] > 2 * acts[1]
    assert acts[1] == pytest.approx(acts[2], rel=0.01)


def test_cpu_step_time_is_predicted_from_the_ranks_probes(validated):
    """On CPU the catalog entry is this host: the prediction uses every rank's measured GEMM rate,
    memory bandwidth, op overhead and collective latency (launcher/device_probe.py), medians over
    ranks, and says so in validate.json."""
    import statistics

    result = validated("dp2-pp2-tp1-zero1-none")["file"]
    figures = result["device_figures"]
    assert sorted(figures) == ["0", "1", "2", "3"]
    used = result["predicted_for"]
    assert used["name"] == "cpu" and used["matmul_efficiency"] == 1.0
    for key in ("peak_tflops", "hbm_gb_per_s", "op_overhead_us", "collective_latency_us",
                "intra_node_gb_per_s"):
        values = [f[key] for f in figures.values()]
        assert all(v > 0 for v in values)
        assert used[key] == pytest.approx(statistics.median(values))
    times = [r for r in result["rows"] if r["quantity"] == "step_time_s"]
    assert len(times) == 4 and all(r["predicted"] > 0 and r["measured"] > 0 for r in times)
