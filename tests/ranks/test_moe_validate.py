"""`llmlaunch validate` on a Mixture-of-Experts run at ep 2 (tiny Mixtral: 4 experts, top-2; dp 2 x
pp 2, 4 ranks): every rank's expert weights within 1% of the planner's (E/ep experts of each MoE
block on its stage), and the measured all-to-all buffer of its MoE layers reported beside the
planner's alltoall_buffer_bytes (the balanced load: the measured excess is the routing imbalance).
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_validate import launch  # noqa: E402  (tiny-cpu.yaml's validate, one session)

SETS = ["model.arch=mixtral", "model.layers=4", "model.hidden=64", "model.heads=4",
        "model.kv_heads=2", "model.experts=4", "model.experts_per_token=2",
        "model.expert_ffn_hidden=64", "layout.dp=2", "layout.pp=2", "layout.ep=2",
        "layout.zero_stage=1"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("moe-validate") / "run"
    return launch(run_dir, SETS, as_json=True)["file"]["rows"]


def test_expert_weights_per_rank_within_one_percent_of_the_planner(rows):
    experts = [r for r in rows if r["quantity"] == "expert_weights"]
    assert sorted(r["rank"] for r in experts) == [0, 1, 2, 3]
    # 2 MoE blocks per stage, 2 of 4 experts each, SwiGLU 3 h f_e = 12,288 parameters, fp32
    for row in experts:
        assert row["predicted"] == 2 * 2 * 3 * 64 * 64 * 4
        assert abs(row["error_pct"]) < 1.0, row


def test_dispatch_buffers_are_measured_against_the_planners_alltoall_buffer(rows):
    buffers = [r for r in rows if r["quantity"] == "dispatch_buffer"]
    assert sorted(r["rank"] for r in buffers) == [0, 1, 2, 3]
    for row in buffers:
        # T k h A at the balanced load: 2 x 64 tokens, k = 2, h = 64, 4 bytes
        assert row["predicted"] == 2 * 64 * 2 * 64 * 4
        # dropless: at least the T k copies sent, at most every copy of both ranks arriving
        assert row["predicted"] <= row["measured"] <= 2 * row["predicted"]
    print("\ndispatch buffer measured / planned per rank:",
          {r["rank"]: round(r["measured"] / r["predicted"], 3) for r in buffers})
