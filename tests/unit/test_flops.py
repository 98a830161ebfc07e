"""FLOP counts pinned to Megatron-LM's and PaLM's published formulas."""
import pytest

from llmlaunch.topology.flops import (hardware_flops_per_token, megatron_iteration_flops,
                                      model_flops_per_token, training_flops)
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.shapes import preset
from llmlaunch.topology.params import layer_params


@pytest.mark.parametrize("name", ["gpt3-175b", "megatron-1t", "megatron-18b"])
def test_full_recompute_equals_narayanan_eq3(name):
    # Narayanan et al. 2021, eq. (3): F = 96 B s l h^2 (1 + s/6h + V/16lh), full recomputation
    spec = preset(name)
    batch = 1536
    ours = hardware_flops_per_token(spec, "full") * batch * spec.seq_len
    assert ours == pytest.approx(megatron_iteration_flops(batch, spec.seq_len, spec.layers,
                                                          spec.hidden, spec.vocab), rel=1e-12)


def test_model_flops_equal_palm_6n_plus_attention():
    # Chowdhery et al. 2022, Appendix B: 6N + 12 L H Q T per token, N the matmul parameters
    spec = preset("llama3-8b")
    h, s, L = spec.hidden, spec.seq_len, spec.layers
    matmul_params = L * (layer_params(spec).total - 2 * h) + spec.vocab * h  # no norms, no input table
    assert model_flops_per_token(spec) == 6 * matmul_params + 12 * L * h * s


def test_tiny_hand_count():
    # h=8, f=32, a=2, s=4, V=10, L=1, gpt2: QKV 2*8*24=384, out 128, MLP 2*2*8*32=1024,
    # attention 4*4*8=128 -> block 1664; head 2*8*10=160; x3 = 5472
    spec = ModelSpec(arch="gpt2", layers=1, hidden=8, heads=2, vocab=10, seq_len=4)
    assert model_flops_per_token(spec) == 3 * (1664 + 160)
    assert hardware_flops_per_token(spec, "full") == 3 * (1664 + 160) + 1664
    assert hardware_flops_per_token(spec, "selective") == 3 * (1664 + 160) + 128


def test_6nd_gpt3_is_the_lectures_figure():
    # lecture table: GPT-3 175B on 300B tokens ~ 3.1e23 FLOPs; Llama 2 70B on 2T ~ 8.4e23
    assert training_flops(175e9, 300e9) == pytest.approx(3.15e23)
    assert training_flops(70e9, 2e12) == pytest.approx(8.4e23)
