"""Parameter counts pinned to hand computation and to published counts."""
import pytest

from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.shapes import preset, spec_from_params
from llmlaunch.topology.params import (embedding_params, head_params, layer_params, padded_vocab,
                                       total_params)


def test_gpt2_block_is_12h2_plus_13h():
    # hand count for f = 4h: QKV 3h^2+3h, out h^2+h, fc1 4h^2+4h, fc2 4h^2+h, 2 LayerNorms 4h
    h = 64
    spec = ModelSpec(arch="gpt2", layers=2, hidden=h, heads=4, vocab=100, seq_len=16)
    assert layer_params(spec).total == 12 * h * h + 13 * h


def test_tiny_gpt2_total_by_hand():
    h, V, s, L = 64, 100, 16, 2
    spec = ModelSpec(arch="gpt2", layers=L, hidden=h, heads=4, vocab=V, seq_len=s)
    assert total_params(spec) == L * (12 * h * h + 13 * h) + V * h + s * h + 2 * h


def test_tiny_llama_total_by_hand():
    # q, o: h^2 each; k, v: h * kv_heads * d each; gate/up/down 3hf; 2 RMSNorms; untied head; final norm
    h, heads, kv, f, V, L = 64, 4, 2, 160, 100, 3
    spec = ModelSpec(arch="llama", layers=L, hidden=h, heads=heads, kv_heads=kv, ffn_hidden=f, vocab=V)
    d = h // heads
    block = 2 * h * h + 2 * h * kv * d + 3 * h * f + 2 * h
    assert total_params(spec) == L * block + 2 * V * h + h


@pytest.mark.parametrize("name, published", [
    ("llama2-7b", 6_738_415_616),    # Touvron et al. 2023; HF LlamaForCausalLM count
    ("llama2-13b", 13_015_864_320),
    ("llama2-70b", 68_976_648_192),
    ("llama3-8b", 8_030_261_248),    # Llama Team 2024; HF count
    ("llama3-70b", 70_553_706_496),
    ("llama3-405b", 405_853_388_800),
])
def test_llama_presets_match_published_counts_exactly(name, published):
    assert total_params(preset(name)) == published


@pytest.mark.parametrize("name, published_billions", [
    # Narayanan et al. 2021, Table 1 (vocab 51200, seq 2048)
    ("megatron-18b", 18.4), ("megatron-39b", 39.1), ("megatron-76b", 76.1),
    ("megatron-146b", 145.6), ("megatron-310b", 310.1), ("mt-nlg-530b", 529.6),
    ("megatron-1t", 1008.0),
])
def test_megatron_table1_counts(name, published_billions):
    assert total_params(preset(name)) / 1e9 == pytest.approx(published_billions, abs=0.05)


def test_gpt3_175b_within_half_percent_of_published():
    # Brown et al. 2020, Table 2.1: 175.0B
    assert total_params(preset("gpt3-175b")) == pytest.approx(175.0e9, rel=0.005)


def test_bloom_differs_from_published_only_by_positions_and_embedding_norm():
    # BLOOM-176B has 176,247,271,424 parameters (HF BloomForCausalLM): ALiBi instead of learned
    # positions, and a LayerNorm after the embedding. As arch gpt2 we add s*h and lack 2h.
    spec = preset("bloom-176b")
    assert total_params(spec) - spec.seq_len * spec.hidden + 2 * spec.hidden == 176_247_271_424


def test_padded_vocab_is_megatrons_rule():
    assert padded_vocab(50257, 1) == 50304
    assert padded_vocab(50257, 8) == 51200
    assert padded_vocab(51200, 8) == 51200
    assert padded_vocab(100, 2) == 256


def test_tp_slices_sum_to_the_full_block():
    spec = preset("llama3-8b")
    for tp in (1, 2, 4, 8):
        lp = layer_params(spec, tp)
        assert lp.sharded * tp + lp.replicated == layer_params(spec).total


def test_tied_head_adds_only_the_norm_on_one_stage_but_a_copy_on_a_separate_stage():
    spec = preset("gpt3-175b")
    assert head_params(spec, 8) == 2 * spec.hidden
    assert head_params(spec, 8, separate_stage=True) == 2 * spec.hidden + 51200 // 8 * spec.hidden
    assert embedding_params(spec, 8) == 51200 // 8 * spec.hidden + spec.seq_len * spec.hidden


def test_params_snap_to_published_family_member():
    assert spec_from_params(175e9).name == "gpt3-175b"
    assert spec_from_params(1e12).name == "megatron-1t"


def test_params_derive_a_shape_near_the_target():
    for target in (3e9, 20e9, 300e9, 3e12):
        spec = spec_from_params(target)
        assert total_params(spec) == pytest.approx(target, rel=0.05)
        assert spec.hidden % spec.heads == 0 and spec.heads % 8 == 0


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_params_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="--params"):
        spec_from_params(bad)


def test_spec_validation_messages():
    with pytest.raises(ValueError, match="not divisible by heads"):
        ModelSpec(arch="gpt2", layers=2, hidden=100, heads=3)
    with pytest.raises(ValueError, match="kv_heads"):
        ModelSpec(arch="gpt2", layers=2, hidden=64, heads=4, kv_heads=2)
    with pytest.raises(ValueError, match="arch"):
        ModelSpec(arch="bert", layers=2, hidden=64, heads=4)


def test_llama_default_ffn_follows_the_reference_rule():
    # Llama 2 7B: 2/3 * 4 * 4096 = 10922.67 -> multiple of 256 above = 11008
    assert ModelSpec(arch="llama", layers=2, hidden=4096, heads=32).ffn_hidden == 11008
