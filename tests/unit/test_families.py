"""The families' shape fields and their parameter, FLOP and activation terms, pinned to hand counts
and published figures (topology/model_spec.py, params.py, flops.py, memory.py)."""
import pytest

from llmlaunch.topology.flops import (attended_keys, attention_core_flops_per_token,
                                      block_matmul_flops_per_token, model_flops_per_token,
                                      training_flops)
from llmlaunch.topology.memory import activation_bytes_per_layer
from llmlaunch.topology.model_spec import ModelSpec, untrainable_reasons
from llmlaunch.topology.params import (active_params, dense_layer_params, head_params,
                                       layer_params, total_params)
from llmlaunch.topology.shapes import preset

H, A, KV, F, V = 64, 4, 2, 160, 100


def test_defaults_keep_gpt2_and_llama_as_they_were():
    gpt2 = ModelSpec(arch="gpt2", layers=2, hidden=H, heads=A, vocab=V, seq_len=16)
    assert (gpt2.head_dim, gpt2.tied_embeddings, gpt2.qkv_bias, gpt2.biases, gpt2.qk_norm,
            gpt2.norm, gpt2.mlp, gpt2.positions, gpt2.block_norms) == (
        16, True, True, True, False, "layernorm", "gelu", "learned", 2)
    llama = ModelSpec(arch="llama", layers=2, hidden=H, heads=A, kv_heads=KV, vocab=V)
    assert (llama.head_dim, llama.tied_embeddings, llama.qkv_bias, llama.biases, llama.qk_norm,
            llama.norm, llama.mlp, llama.positions, llama.ffn_hidden) == (
        16, False, False, False, False, "rmsnorm", "swiglu", "rope", 256)
    assert gpt2.replace(name="x") == gpt2.replace(name="x")      # resolved values round-trip


def test_runnable_families_fix_their_features_and_say_what_else_to_use():
    with pytest.raises(ValueError, match="arch qwen2 has qkv_bias=True.*arch decoder"):
        ModelSpec(arch="qwen2", layers=2, hidden=H, heads=A, qkv_bias=False)
    with pytest.raises(ValueError, match="arch gpt2 has tied_embeddings=True"):
        ModelSpec(arch="gpt2", layers=2, hidden=H, heads=A, tied_embeddings=False)
    with pytest.raises(ValueError, match="hidden 64 is not divisible by heads 5 .*head_dim"):
        ModelSpec(arch="llama", layers=2, hidden=H, heads=5)
    assert ModelSpec(arch="qwen3", layers=2, hidden=H, heads=5, head_dim=32).q_width == 160
    with pytest.raises(ValueError, match="experts_per_token is set but experts is 0"):
        ModelSpec(arch="llama", layers=2, hidden=H, heads=A, experts_per_token=2)
    with pytest.raises(ValueError, match="experts_per_token must be between 1 and experts=8"):
        ModelSpec(arch="mixtral", layers=2, hidden=H, heads=A, experts=8, experts_per_token=9)


def test_untrainable_reasons():
    spec = ModelSpec(arch="mistral", layers=4, hidden=H, heads=A, sliding_window=8)
    assert untrainable_reasons(spec) == []
    assert "no sliding-window" in untrainable_reasons(spec.replace(arch="llama"))[0]
    assert "4 layers" in untrainable_reasons(spec.replace(sliding_window_layers=2))[0]
    assert "planned only" in untrainable_reasons(spec.replace(arch="gemma2"))[0]


def test_qwen3_block_by_hand():
    # q 4*32 = 128 wide: QKV (128 + 2*2*32) * 64, out 128 * 64, QK-norm 2 * 32, SwiGLU 3*64*160,
    # two RMSNorms 2*64
    spec = ModelSpec(arch="qwen3", layers=2, hidden=H, heads=A, kv_heads=KV, head_dim=32,
                     ffn_hidden=F, vocab=V)
    assert layer_params(spec).total == 256 * 64 + 128 * 64 + 64 + 3 * 64 * 160 + 128
    assert layer_params(spec).replicated == 64 + 128
    assert layer_params(spec, 2).sharded * 2 + layer_params(spec, 2).replicated == \
        layer_params(spec).total


def test_qwen2_bias_gemma2_norms_neox_biases_by_hand():
    llama = ModelSpec(arch="llama", layers=2, hidden=H, heads=A, kv_heads=KV, ffn_hidden=F, vocab=V)
    qwen2 = llama.replace(arch="qwen2")
    assert layer_params(qwen2).total - layer_params(llama).total == 64 + 2 * 32   # q + 2 kv
    gemma2 = llama.replace(arch="gemma2")                   # GeGLU: same shape as SwiGLU
    assert layer_params(gemma2).total - layer_params(llama).total == 2 * 64        # 2 more norms
    assert total_params(gemma2) - total_params(llama) == 2 * 2 * 64 - V * 64       # and tied
    neox = ModelSpec(arch="gpt_neox", layers=2, hidden=H, heads=A, ffn_hidden=4 * H, vocab=V)
    # like gpt2's block (12h^2 + 13h) but rotary: no position table, and an untied head
    assert layer_params(neox).total == 12 * H * H + 13 * H
    assert total_params(neox) == 2 * (12 * H * H + 13 * H) + 2 * V * H + 2 * H
    tied = qwen2.replace(tied_embeddings=True)
    assert total_params(qwen2) - total_params(tied) == V * H
    assert head_params(tied, separate_stage=True) == head_params(qwen2)


def mixtral_8x7b() -> ModelSpec:
    return ModelSpec(arch="mixtral", layers=32, hidden=4096, heads=32, kv_heads=8, ffn_hidden=14336,
                     vocab=32000, experts=8, experts_per_token=2, rope_theta=1e6)


def test_mixtral_total_and_active_match_the_published_46_7b_and_12_9b():
    # Jiang et al. 2024 (Mixtral of Experts): 46.7B parameters, 12.9B active per token
    spec = mixtral_8x7b()
    assert total_params(spec) == 46_702_792_704           # transformers' count (tests/torch)
    assert active_params(spec) == 12_879_925_248
    assert total_params(spec) / 1e9 == pytest.approx(46.7, abs=0.05)
    assert active_params(spec) / 1e9 == pytest.approx(12.9, abs=0.05)
    # by hand: a token skips 6 experts of 3 h f in each of 32 layers
    assert total_params(spec) - active_params(spec) == 32 * 6 * 3 * 4096 * 14336


def test_moe_block_with_shared_expert_and_dense_layers_by_hand():
    spec = ModelSpec(arch="qwen2_moe", layers=4, hidden=H, heads=A, ffn_hidden=F, vocab=V,
                     experts=6, experts_per_token=2, expert_ffn_hidden=32,
                     shared_expert_ffn_hidden=96, shared_expert_gate=True, dense_layers=1)
    attention = 3 * 64 * 64 + 3 * 64 + 64 * 64              # QKV with bias, out
    moe = 6 * 3 * 64 * 32 + 64 * 6 + 3 * 64 * 96 + 64      # experts, router, shared, its gate
    assert layer_params(spec).total == attention + moe + 2 * 64
    assert dense_layer_params(spec).total == attention + 3 * 64 * F + 2 * 64
    assert total_params(spec) == (3 * layer_params(spec).total + dense_layer_params(spec).total
                                  + 2 * V * H + H)
    assert total_params(spec) - active_params(spec) == 3 * 4 * 3 * 64 * 32
    # FLOPs: the active experts, the shared expert, the router and its gate
    assert block_matmul_flops_per_token(spec) == 2 * (attention - 3 * 64) + (
        2 * 3 * 64 * 32 * 2 + 2 * 64 * 6 + 2 * 3 * 64 * 96 + 2 * 64)


def test_model_flops_of_mixtral_are_6_n_active_plus_attention():
    # PaLM's 6N + 12 L q s per token, with N the active matmul parameters (all but norms, the
    # token table; the router counts as a matmul)
    spec = mixtral_8x7b()
    s = spec.seq_len
    matmul_active = active_params(spec) - 32000 * 4096 - 32 * 2 * 4096 - 4096
    assert model_flops_per_token(spec) == 6 * matmul_active + 12 * 32 * 4096 * s
    assert training_flops(active_params(spec), 1e12) == pytest.approx(7.728e22, rel=1e-3)


def test_sliding_window_limits_the_attended_keys():
    spec = ModelSpec(arch="gemma2", layers=4, hidden=H, heads=A, head_dim=32, seq_len=8192,
                     sliding_window=4096, sliding_window_layers=2)
    assert attended_keys(spec) == (2 * 4096 + 2 * 8192) / 4
    assert attention_core_flops_per_token(spec) == 4 * 6144 * 128          # q = 4 * 32
    assert attended_keys(spec, seq_len=2048) == 2048                        # window >= s: none
    mistral = ModelSpec(arch="mistral", layers=4, hidden=H, heads=A, seq_len=16, sliding_window=4)
    assert attended_keys(mistral) == 4 and mistral.windowed_layers == 4


def test_activation_terms_of_head_dim_and_qk_norm_by_hand():
    base = ModelSpec(arch="llama", layers=2, hidden=H, heads=A, kv_heads=KV, ffn_hidden=F,
                     vocab=V, seq_len=16)
    qwen3 = base.replace(arch="qwen3", head_dim=32)
    s, b, act, norm = 16, 1, 2, 4
    extra_q = 64        # q widens from 64 to 128, kv from 32 to 64
    extra_kv = 32
    # QKV saved + attention output + RoPE copies of q and k + cos/sin tables, widened; QK-norm:
    # input (norm bytes) and normalised tensor (act) of q and k
    diff = (act * s * b * (extra_q + 2 * extra_kv) + act * s * b * extra_q
            + act * s * b * (extra_q + extra_kv) + 8 * s * 16
            + (norm + act) * s * b * (128 + 64))
    assert activation_bytes_per_layer(qwen3, b, 1, "none", act, norm_bytes=norm) - \
        activation_bytes_per_layer(base, b, 1, "none", act, norm_bytes=norm) == diff


def test_moe_activation_terms_by_hand():
    dense = ModelSpec(arch="llama", layers=2, hidden=H, heads=A, ffn_hidden=F, vocab=V, seq_len=16)
    moe = dense.replace(arch="mixtral", experts=4, experts_per_token=2, expert_ffn_hidden=32)
    s, act = 16, 2
    # the SwiGLU's 4 f per token, for 2 experts of 32, instead of one MLP of 160; router 2 E fp... x act
    diff = act * (4 * s * 2 * 32 + 2 * s * 4) - act * 4 * s * F
    assert activation_bytes_per_layer(moe, 1, 1, "none", act) - \
        activation_bytes_per_layer(dense, 1, 1, "none", act) == diff


def test_llama_presets_are_unchanged():
    # the Llama 2/3 counts tests/unit/test_params.py pins, and the default block count
    assert total_params(preset("llama3-8b")) == 8_030_261_248
    assert preset("llama2-7b").to_dict()["tied_embeddings"] is False
