"""The module's parameters are exactly what topology/params.py and stage_split.py predict.

Built in one process: a rank's layers need its TP coordinates, not a process group, to exist. The
multi-rank runs in test_model_parallel.py check the same count on real PipelineModule ranks.
"""
from __future__ import annotations

import pytest

from llmlaunch.model.lm import build_items, check_layout, count_parameters, layer_specs
from llmlaunch.model.pipeline import stage_boundaries
from llmlaunch.model.tp import TensorParallelGroup
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.params import (embedding_params, head_params, layer_params,
                                       padded_vocab, total_params)
from llmlaunch.topology.stage_split import split_stages

SPECS = [
    ModelSpec(arch="gpt2", layers=4, hidden=64, heads=4, vocab=200, seq_len=16),
    ModelSpec(arch="llama", layers=4, hidden=64, heads=4, kv_heads=2, vocab=200, seq_len=16),
    # a 128-row vocabulary pad only from tp=2 on; 8 layers over 4 stages; an uneven split
    ModelSpec(arch="gpt2", layers=8, hidden=96, heads=8, ffn_hidden=256, vocab=1000, seq_len=32),
    ModelSpec(arch="llama", layers=7, hidden=128, heads=8, kv_heads=4, vocab=5000, seq_len=32),
    # the llama family's variants: QKV bias and a tied head; QK-norm and q wider than h
    ModelSpec(arch="qwen2", layers=5, hidden=64, heads=4, kv_heads=4, vocab=200, seq_len=16,
              tied_embeddings=True),
    ModelSpec(arch="qwen3", layers=4, hidden=64, heads=8, kv_heads=4, head_dim=32, vocab=200,
              seq_len=16),
]
LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2), (3, 1), (4, 4)]


def stage_rank_modules(spec: ModelSpec, pp: int, tp: int, stage: int, tp_rank: int):
    """The modules one rank of `stage` builds, as PipelineModule would."""
    parts = stage_boundaries(spec, pp, tp)
    items = layer_specs(spec, TensorParallelGroup(tp_rank, tp), "none")
    modules, _ = build_items(items[parts[stage]:parts[stage + 1]])
    return modules


def expected_params(spec: ModelSpec, pp: int, tp: int, stage: int) -> int:
    count = split_stages(spec, pp, tp)[stage] * layer_params(spec, tp).total
    if stage == 0:
        count += embedding_params(spec, tp)
    if stage == pp - 1:
        count += head_params(spec, tp, separate_stage=pp > 1)
    return count


def fits(spec: ModelSpec, pp: int, tp: int) -> bool:
    try:
        check_layout(spec, pp, tp)
    except ValueError:
        return False
    return True


# every layout that fits the shape (tp=4 does not divide the 4-head, 2-KV-head llama)
CASES = [(spec, pp, tp) for spec in SPECS for pp, tp in LAYOUTS if fits(spec, pp, tp)]


@pytest.mark.parametrize("spec,pp,tp", CASES,
                         ids=[f"{s.arch}-L{s.layers}-pp{pp}-tp{tp}" for s, pp, tp in CASES])
def test_rank_parameters_match_params_py(spec, pp, tp):
    for stage in range(pp):
        for tp_rank in range(tp):
            modules = stage_rank_modules(spec, pp, tp, stage, tp_rank)
            count = sum(count_parameters(m) for m in modules)
            assert count == expected_params(spec, pp, tp, stage), (stage, tp_rank)


def test_layout_check_rejects_what_tp_cannot_split():
    with pytest.raises(ValueError, match="kv_heads"):
        check_layout(SPECS[1], 1, 4)
    with pytest.raises(ValueError, match="exceeds"):
        check_layout(SPECS[0], 5, 1)


def test_cases_include_uneven_stage_splits():
    """The parametrisation above runs pipeline splits whose stages hold different block counts."""
    assert any(pp > 1 and len(set(split_stages(s, pp, tp))) > 1 for s, pp, tp in CASES)


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.arch)
def test_sharded_and_replicated_split_per_block(spec):
    """One block on one of two TP ranks: its sharded parameters are half the block's, the
    replicated ones (norms, row-parallel biases) whole; as layer_params says."""
    full = layer_params(spec, 1)
    half = layer_params(spec, 2)
    block = stage_rank_modules(spec, 1, 2, 0, 1)[1 + spec.learned_positions]
    sharded = sum(p.numel() for n, p in block.named_parameters()
                  if n.startswith(("attn.qkv", "attn.out.weight", "mlp.fc1", "mlp.fc2.weight",
                                   "mlp.gate_up", "mlp.down")))
    assert sharded == half.sharded == full.sharded // 2
    assert count_parameters(block) - sharded == half.replicated == full.replicated


def test_stage_boundaries_place_embedding_first_and_head_last():
    spec = SPECS[2]
    parts = stage_boundaries(spec, 4, 2)
    blocks = split_stages(spec, 4, 2)
    assert parts[0] == 0 and parts[-1] == 2 + spec.layers + 2
    assert [parts[i + 1] - parts[i] for i in range(4)] == \
        [2 + blocks[0], blocks[1], blocks[2], blocks[3] + 2]


def test_padded_vocab_rows_are_split_evenly():
    spec = SPECS[0]
    for tp in (1, 2, 4):
        embedding = stage_rank_modules(spec, 1, tp, 0, tp - 1)[0]
        assert embedding.weight.shape[0] * tp == padded_vocab(spec.vocab, tp)


def test_total_params_is_the_unpadded_tp1_count():
    """total_params counts the published model: padding removed, the tied head counted once."""
    for spec in SPECS:
        modules = stage_rank_modules(spec, 1, 1, 0, 0)
        padding = (padded_vocab(spec.vocab, 1) - spec.vocab) * spec.hidden
        heads = 1 if spec.tied_embeddings else 2
        assert sum(count_parameters(m) for m in modules) - heads * padding == total_params(spec)
