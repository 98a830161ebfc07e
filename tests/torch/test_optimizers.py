"""Lion and Adafactor (launcher/optimizers.py) against their published formulas and transformers'
Adafactor, and the planner's count of their states (topology/optimizer_states.py) against what
they allocate on every rank's modules. Multi-rank equality (dp x pp x tp): tests/ranks/
test_optimizer_runs.py."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from llmlaunch.launcher.checkpoints.optimizer_state import state_split
from llmlaunch.launcher.optimizers import Adafactor, Lion
from llmlaunch.model.lm import build_items, check_layout, layer_specs
from llmlaunch.model.pipeline import stage_boundaries
from llmlaunch.model.sharding import TPSplit, merge_shards, shard_tensor
from llmlaunch.model.tp import TensorParallelGroup
from llmlaunch.topology.memory import PRECISIONS, model_state_bytes
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.optimizer_states import (adafactor_stage_elements, factored_elements,
                                                 optimizer_refusal)
from llmlaunch.topology.stage_split import split_stages

pytestmark = pytest.mark.torch


def test_lion_one_step_by_hand():
    """Chen et al. 2023, Algorithm 2, with lr 0.1, betas (0.9, 0.99), weight decay 0.5."""
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.0, 3.0]))
    opt = Lion([param], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    opt.state[param] = {"step": 0, "exp_avg": torch.tensor([0.0, 1.0, 0.0, -10.0])}
    param.grad = torch.tensor([2.0, -1.0, 0.0, 1.0])
    opt.step()
    # c = 0.9 m + 0.1 g = [0.2, 0.8, 0, -8.9]; sign = [1, 1, 0, -1]; p * (1 - 0.05) - 0.1 sign
    assert param.detach().tolist() == pytest.approx([0.85, -2.0, 0.0, 2.95])
    # m = 0.99 m + 0.01 g
    assert opt.state[param]["exp_avg"].tolist() == pytest.approx([0.02, 0.98, 0.0, -9.89])
    assert opt.state[param]["step"] == 1


def test_lion_leaves_a_zero_gradient_entry_alone():
    """sign(0) = 0: an untouched (padded vocabulary) row does not move, unlike FusedLion's c > 0."""
    param = torch.nn.Parameter(torch.zeros(3))
    opt = Lion([param], lr=0.1)
    for _ in range(3):
        param.grad = torch.zeros(3)
        opt.step()
    assert param.detach().abs().max().item() == 0.0


def test_adafactor_equals_transformers_adafactor():
    """transformers' Adafactor with lr given (relative_step=False, scale_parameter=False,
    beta1=None): the same weights and factored moments over five steps, matrix and vector."""
    from transformers.optimization import Adafactor as HFAdafactor

    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(6, 4, generator=gen), torch.randn(5, generator=gen)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    opt_ours = Adafactor(ours, lr=0.01, weight_decay=0.1)
    opt_theirs = HFAdafactor(theirs, lr=0.01, weight_decay=0.1, relative_step=False,
                             scale_parameter=False, warmup_init=False, beta1=None)
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=gen) for t in start]
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=0)
    for key in ("exp_avg_sq_row", "exp_avg_sq_col"):
        torch.testing.assert_close(opt_ours.state[ours[0]][key], opt_theirs.state[theirs[0]][key])
    torch.testing.assert_close(opt_ours.state[ours[1]]["exp_avg_sq"],
                               opt_theirs.state[theirs[1]]["exp_avg_sq"])


def test_factored_moment_reshards_by_cutting_the_split_axis():
    """A column-parallel [R, C] matrix: the row factor is cut like the rows (q, k, v segments
    each), the column factor is the same on every rank; a row-parallel one the other way."""
    column = TPSplit(0, (4, 2, 2))
    row_cut = state_split(column, "exp_avg_sq_row", 2)
    assert row_cut == TPSplit(0, (4, 2, 2)) and state_split(column, "exp_avg_sq_col", 2) is None
    rows = torch.arange(8.0)
    slices = [shard_tensor(rows, row_cut, r, 2) for r in range(2)]
    assert slices[0].tolist() == [0, 1, 4, 6] and slices[1].tolist() == [2, 3, 5, 7]
    assert torch.equal(merge_shards(slices, row_cut), rows)
    by_columns = TPSplit(1, (6,))
    assert state_split(by_columns, "exp_avg_sq_row", 2) is None
    assert state_split(by_columns, "exp_avg_sq_col", 2) == TPSplit(0, (6,))
    assert state_split(by_columns, "exp_avg", 2) == by_columns


def test_factored_elements_by_hand():
    assert factored_elements((6, 4)) == 10
    assert factored_elements((5,)) == 5
    assert factored_elements((3, 6, 4)) == 3 * 6 + 3 * 4


SPECS = [
    ModelSpec(arch="llama", layers=4, hidden=64, heads=8, kv_heads=4, vocab=1024, seq_len=64),
    ModelSpec(arch="gpt2", layers=4, hidden=64, heads=4, vocab=200, seq_len=16),
    ModelSpec(arch="qwen3", layers=3, hidden=64, heads=8, kv_heads=4, head_dim=32, vocab=300,
              seq_len=16, tied_embeddings=True),
]
LAYOUTS = [(1, 1), (2, 2), (1, 4), (3, 1)]
def _fits(spec, pp, tp):
    try:
        check_layout(spec, pp, tp)
    except ValueError:
        return False
    return True


CASES = [(s, pp, tp) for s in SPECS for pp, tp in LAYOUTS if _fits(s, pp, tp)]


@pytest.mark.parametrize("spec,pp,tp", CASES,
                         ids=[f"{s.arch}-pp{pp}-tp{tp}" for s, pp, tp in CASES])
def test_planner_counts_adafactor_states_as_allocated(spec, pp, tp):
    """Twin truth: the elements Adafactor.new_state allocates for every parameter a rank of each
    stage builds equal adafactor_stage_elements."""
    parts = stage_boundaries(spec, pp, tp)
    for stage, blocks in enumerate(split_stages(spec, pp, tp)):
        for tp_rank in range(tp):
            items = layer_specs(spec, TensorParallelGroup(tp_rank, tp), "none")
            modules, _ = build_items(items[parts[stage]:parts[stage + 1]])
            allocated = sum(t.numel() for m in modules for p in m.parameters()
                            for t in Adafactor.new_state(p).values() if torch.is_tensor(t))
            assert allocated == adafactor_stage_elements(
                spec, tp=tp, blocks=blocks, first=stage == 0, last=stage == pp - 1, pp=pp), \
                (stage, tp_rank)


def test_optimizer_states_per_parameter():
    """AdamW 8 fp32 bytes per parameter, Lion 4, Adafactor 0 elementwise (its factors apart); in
    bf16 the 4-byte master on top."""
    fp32, bf16 = PRECISIONS["fp32"], PRECISIONS["bf16"]
    for precision, master in ((fp32, 0), (bf16, 4)):
        for optimizer, moments in (("adamw", 8), ("lion", 4), ("adafactor", 0)):
            chosen = dataclasses.replace(precision, optimizer=optimizer)
            assert model_state_bytes(1000, 1, 0, chosen)["optimizer"] == 1000 * (master + moments)


def test_adafactor_refused_where_it_cannot_factor():
    spec = SPECS[0]
    assert "zero_stage=0" in optimizer_refusal("adafactor", 1, "fp32", spec)
    assert "fp32" in optimizer_refusal("adafactor", 0, "bf16", spec)
    assert optimizer_refusal("adafactor", 0, "fp32", spec) is None
    assert optimizer_refusal("lion", 3, "bf16", spec) is None
    assert "adamw, lion, adafactor" in optimizer_refusal("sgd", 0, "fp32", spec)
    moe = ModelSpec(arch="mixtral", layers=2, hidden=64, heads=4, kv_heads=2, vocab=200,
                    seq_len=16, experts=4, experts_per_token=2)
    assert optimizer_refusal("adamw", 1, "bf16", moe) is None
    assert "dense models" in optimizer_refusal("lion", 1, "bf16", moe)
