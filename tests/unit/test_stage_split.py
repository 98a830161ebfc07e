"""The pipeline split shared by model/ and the planner."""
import itertools

import pytest

from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.shapes import preset
from llmlaunch.topology.stage_split import balanced_block_split, split_stages, stage_costs_items


def test_llama3_405b_sheds_one_block_on_first_and_last_stage():
    # Llama Team 2024, Section 3.3.2: with 16 stages "we reduce one Transformer layer each from the
    # first and the last stages" because of the embedding and the output head.
    assert split_stages(preset("llama3-405b"), 16, 8) == (7,) + (8,) * 14 + (7,)


def test_small_vocab_gives_the_uniform_split():
    assert split_stages(preset("gpt3-175b"), 8, 8) == (12,) * 8


def test_split_is_optimal_by_brute_force():
    # compare the bottleneck with every possible split of a small model
    spec = ModelSpec(arch="llama", layers=9, hidden=64, heads=4, kv_heads=2, vocab=3000, seq_len=16)
    for pp in (2, 3, 4):
        costs = stage_costs_items(spec, 1, pp)
        first, block, last = costs[0], costs[1], costs[-1]

        def bottleneck(split):
            loads = [b * block for b in split]
            loads[0] += first
            loads[-1] += last
            return max(loads)

        best = min(bottleneck(s) for s in itertools.product(range(1, 10), repeat=pp) if sum(s) == 9)
        split = split_stages(spec, pp)
        assert sum(split) == 9 and min(split) >= 1
        assert bottleneck(split) == best


def test_pp_beyond_layers_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        split_stages(ModelSpec(arch="gpt2", layers=4, hidden=64, heads=4), 5)


def test_balanced_split_hand_example():
    # 4 blocks of cost 10, embedding 15, head 15, two stages: [15+10, 10+10+10+15] is worse than
    # [15+10+10, 10+10+15] = 35 / 35
    assert balanced_block_split(4, 2, [15, 10, 10, 10, 10, 15]) == [2, 2]
