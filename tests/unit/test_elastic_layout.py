"""Elastic starts (launcher/elastic.py): the layout for the hosts a start got, hand-computed; and
`plan --emit --min-nodes K` writes the node range."""
import pytest

from llmlaunch.cli import main
from llmlaunch.launcher.elastic import layout_for_world, overrides
from llmlaunch.topology.layout import Layout

PLANNED = Layout(dp=3, pp=2, tp=2, micro_batch=2, grad_accum=4)   # 12 ranks, global batch 24


def test_fewer_hosts_shrink_dp_and_keep_the_global_batch():
    two = layout_for_world(PLANNED, 8, 4)   # 2 hosts of 4: dp = 8 / (2 * 2) = 2, accum = 24 / (2 * 2)
    assert (two.dp, two.pp, two.tp, two.micro_batch, two.grad_accum) == (2, 2, 2, 2, 6)
    assert two.global_batch == 24
    assert overrides(PLANNED, two) == ["layout.dp=2", "layout.grad_accum=6"]


def test_the_planned_allocation_keeps_the_planned_layout():
    assert layout_for_world(PLANNED, 12, 4) == PLANNED
    assert overrides(PLANNED, PLANNED) == []


def test_more_hosts_grow_dp():
    four = layout_for_world(PLANNED, 16, 4)   # dp 4, accum 24 / (2 * 4) = 3
    assert (four.dp, four.grad_accum) == (4, 3)


def test_no_layout_fits_is_one_clear_error():
    with pytest.raises(ValueError, match=r"dp=5 \(20 ranks\) cannot keep the global batch of 24 "
                                         r"sequences with micro-batch 2: it needs dp in "
                                         r"\[1, 2, 3, 4, 6, 12\]"):
        layout_for_world(PLANNED, 20, 4)
    with pytest.raises(ValueError, match="tp=2 does not fit inside a host of 3 ranks"):
        layout_for_world(PLANNED, 6, 3)
    with pytest.raises(ValueError, match="6 ranks do not split into pipelines of pp\\*tp = 2\\*2 = 4"):
        layout_for_world(PLANNED, 6, 2)


PLAN = ["plan", "--gpu", "cpu", "--gpus", "12", "--gpus-per-node", "4", "--layers", "4",
        "--hidden", "64", "--heads", "4", "--vocab", "1024", "--seq-len", "64", "--dp", "3",
        "--pp", "2", "--tp", "2", "--precision", "fp32", "--global-batch", "24",
        "--micro-batch", "2"]


def test_emit_min_nodes_writes_a_node_range(tmp_path, capsys):
    assert main([*PLAN, "--min-nodes", "2", "--emit", str(tmp_path / "e")]) == 0
    script = (tmp_path / "e" / "train.sbatch").read_text()
    assert "#SBATCH --nodes=2-3\n" in script and "#SBATCH --ntasks-per-node=4\n" in script
    assert "export LLMLAUNCH_ELASTIC=2\n" in script
    assert main([*PLAN, "--emit", str(tmp_path / "fixed")]) == 0
    fixed = (tmp_path / "fixed" / "train.sbatch").read_text()
    assert "#SBATCH --nodes=3\n" in fixed and "LLMLAUNCH_ELASTIC" not in fixed
    capsys.readouterr()
    assert main([*PLAN, "--min-nodes", "4", "--emit", str(tmp_path / "bad")]) == 2
    assert "--min-nodes 4 must be between 1 and the plan's 3 node(s)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
