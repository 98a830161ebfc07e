"""The GEMM list of a training step (topology/gemms.py): shapes after the TP split, pinned to the
FLOP formula (Narayanan et al. 2021 eq. 3) and to hand counts."""
import pytest

from llmlaunch.topology import gemms as gemms_module
from llmlaunch.topology.flops import hardware_flops_per_token, megatron_iteration_flops
from llmlaunch.topology.gemms import (Gemm, attended_keys, block_forward_gemms, block_gemms,
                                      stage_gemm_flops, stage_gemms)
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.shapes import preset


@pytest.mark.parametrize("name,tp", [("gpt3-175b", 1), ("gpt3-175b", 8), ("megatron-1t", 8),
                                     ("megatron-18b", 4)])
def test_gemm_list_sums_to_narayanan_eq3_with_full_recompute(name, tp):
    """Every GEMM of every block and the head, forward, backward and recomputed, over a step:
    exactly eq. (3) when the vocabulary needs no padding (51200 = 50 x 1024, as eq. 3's V)."""
    spec = preset(name).replace(vocab=51200)
    batch, micro_batch = 64, 2
    per_micro_batch = stage_gemm_flops(stage_gemms(
        spec, blocks=spec.layers, last=True, micro_batch=micro_batch, seq_len=spec.seq_len, tp=tp,
        recompute="full"))
    step = per_micro_batch * tp * batch // micro_batch
    assert step == pytest.approx(megatron_iteration_flops(batch, spec.seq_len, spec.layers,
                                                          spec.hidden, spec.vocab), rel=1e-12)
    assert step == pytest.approx(hardware_flops_per_token(spec, "full") * batch * spec.seq_len,
                                 rel=1e-12)


def test_padding_adds_exactly_the_padded_head():
    """GPT-2's 50257 is padded to 50304 (a multiple of 128) at t = 1: the head GEMMs (forward,
    backward-data, backward-weight) compute 6 T h (50304 - 50257) FLOPs more than the model counts."""
    spec = preset("gpt3-125m")
    tokens = spec.seq_len
    listed = stage_gemm_flops(stage_gemms(spec, blocks=spec.layers, last=True, micro_batch=1,
                                          seq_len=spec.seq_len, tp=1, recompute="none"))
    assert listed - hardware_flops_per_token(spec, "none") * tokens == 6 * tokens * 768 * 47


def test_tiny_block_by_hand():
    # h = 8, a = 2 (d = 4), f = 32, s = 4, b = 1, t = 1: T = 4 tokens
    spec = ModelSpec(arch="gpt2", layers=1, hidden=8, heads=2, vocab=10, seq_len=4)
    fwd = {g.name: g for g in block_forward_gemms(spec, micro_batch=1, seq_len=4, tp=1)}
    assert [(g.m, g.n, g.k, g.batch) for g in fwd.values()] == [
        (4, 24, 8, 1), (4, 4, 4, 2), (4, 4, 4, 2), (4, 8, 8, 1), (4, 32, 8, 1), (4, 8, 32, 1)]
    # 2mnk: qkv 1536, scores 256, values 256, out 512, up 2048, down 2048 = 6656 = 4 x 1664
    assert sum(g.flops for g in fwd.values()) == 6656 == 4 * 1664
    full = sum(g.flops for g in block_gemms(spec, micro_batch=1, seq_len=4, tp=1, recompute="full"))
    selective = sum(g.flops for g in block_gemms(spec, micro_batch=1, seq_len=4, tp=1,
                                                 recompute="selective"))
    assert full == 4 * 6656 and selective == 3 * 6656 + 512


def test_backward_shapes():
    """C[m, n] = A[m, k] B[k, n]: dA = dC B^T is (m, k, n), dB = A^T dC is (k, n, m)."""
    data, weight = Gemm("x", 2048, 3072, 768).backward()
    assert (data.m, data.n, data.k, data.phase) == (2048, 768, 3072, "backward-data")
    assert (weight.m, weight.n, weight.k, weight.phase) == (768, 3072, 2048, "backward-weight")
    assert data.flops == weight.flops == Gemm("x", 2048, 3072, 768).flops


def test_tp_split_and_grouped_query_attention():
    """llama3-8b at t = 8, b = 2, s = 8192: q 4096 + k, v 2 x 1024 wide, split 8 ways; 32/8 query
    heads per rank times b; SwiGLU's gate and up each f/t."""
    spec = preset("llama3-8b")
    fwd = {g.name: g for g in block_forward_gemms(spec, micro_batch=2, seq_len=8192, tp=8)}
    assert (fwd["qkv"].m, fwd["qkv"].n, fwd["qkv"].k) == (16384, 6144 / 8, 4096)
    assert (fwd["attention-scores"].batch, fwd["attention-scores"].k) == (8, 128)
    assert fwd["mlp-gate"].n == fwd["mlp-up"].n == 14336 / 8
    assert (fwd["mlp-down"].n, fwd["mlp-down"].k) == (4096, 14336 / 8)


def test_attended_keys_follow_the_attention_flop_count(monkeypatch):
    """s_k is read off flops.attention_core_flops_per_token: a sliding window there shortens the
    scores GEMM here (the FLOP function is the one source)."""
    spec = preset("gpt3-125m")
    assert attended_keys(spec, 2048) == 2048
    monkeypatch.setattr(gemms_module, "attention_core_flops_per_token",
                        lambda s, seq_len=None: 4 * 512 * s.hidden)
    scores = block_forward_gemms(spec, micro_batch=1, seq_len=2048, tp=1)[1]
    assert (scores.name, scores.m, scores.n) == ("attention-scores", 2048, 512)


def test_fused_attention_skips_half_and_keeps_scores_on_chip():
    spec = preset("gpt3-125m")
    plain = block_forward_gemms(spec, micro_batch=1, seq_len=2048, tp=1)[1]
    fused = block_forward_gemms(spec, micro_batch=1, seq_len=2048, tp=1, causal_skip=True)[1]
    assert fused.executed_flops == plain.flops / 2
    # operands per head: Q 2048 x 64 and K^T 64 x 2048 from HBM; the 2048 x 2048 scores never
    assert plain.operand_elements() - fused.operand_elements() == 2048 * 2048 * 12
    assert fused.shape == plain.shape == "2048x2048x64x12"
