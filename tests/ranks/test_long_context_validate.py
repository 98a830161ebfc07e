"""`llmlaunch validate` on a context- and sequence-parallel layout (issue 25): cp 2 x tp 2 with
sequence parallelism, a llama with GQA, 4 ranks in one launch. Every rank reports its rows; the
weights, gradients and optimizer within 1% of the plan and the saved activations within 10% (the
planner's figure divides by t and by cp as topology/activations.py says); the header names the
layout. (The halving each of cp and SP brings is measured in tests/ranks/test_long_context.py.)"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_validate import launch  # noqa: E402  (the CLI's own entry, in its own session)

SETS = ["model.arch=llama", "model.kv_heads=2", "layout.dp=1", "layout.pp=1", "layout.tp=2",
        "layout.cp=2", "layout.sequence_parallel=true", "layout.zero_stage=1"]


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("cp2tp2sp") / "run", SETS, as_json=False)


def test_every_rank_within_the_plan(validated):
    rows = validated["file"]["rows"]
    assert sorted({r["rank"] for r in rows}) == [0, 1, 2, 3]
    for row in rows:
        if row["quantity"] in ("weights", "gradients", "optimizer"):
            assert row["measured"] == pytest.approx(row["predicted"], rel=0.01), row
        if row["quantity"] == "activations":
            assert row["measured"] == pytest.approx(row["predicted"], rel=0.10), row
    assert sum(r["quantity"] == "activations" for r in rows) == 4


def test_the_layout_is_named(validated):
    layout = validated["file"]["layout"]
    assert (layout["cp"], layout["tp"], layout["sequence_parallel"]) == (2, 2, True)
    assert "x cp 2 (allgather), sequence parallel" in validated["stdout"]
