"""Memory-bound kernels (topology/kernels.py): bytes per token, fused (Megatron-LM) or op by op
(llmlaunch's model/ in eager mode), hand-counted."""
import pytest

from llmlaunch.topology.kernels import (block_kernel_bytes, block_kernels,
                                        cross_entropy_bytes_per_token, head_kernel_bytes)
from llmlaunch.topology.model_spec import ModelSpec

TINY = ModelSpec(arch="gpt2", layers=1, hidden=8, heads=2, vocab=10, seq_len=4)


def kernels(**kw):
    args = dict(kernels="megatron", tp=1, seq_len=4, act=2, flash_attention=False, dropout=True)
    args.update(kw)
    return {k.name: k for k in block_kernels(TINY, **args)}


def test_megatron_block_by_hand():
    """h = 8, f = 32, a = 2 heads x s_k = 4 keys, A = 2: norms 2Ah / 3Ah each; the residual stream's
    two gradient sums 2 x 3Ah; bias-dropout-add 2 (3A + 1) h / 2 (2A + 1) h; bias-GeLU 2Af / 3Af;
    the context copy 2Ah; softmax 2A x 8 / 3A x 8; attention dropout (2A + 1) x 8 each way."""
    ks = kernels()
    assert {n: (k.forward_bytes, k.backward_bytes) for n, k in ks.items()} == {
        "input-norm": (32, 48), "post-attention-norm": (32, 48), "residual-grad-add": (0, 96),
        "bias-dropout-add": (112, 80), "gelu": (128, 192), "context-transpose": (32, 0),
        "softmax": (32, 48), "attention-dropout": (40, 40)}
    block = tuple(ks.values())
    assert block_kernel_bytes(block, "none") == 408 + 552
    assert block_kernel_bytes(block, "full") == 408 + 552 + 408
    assert block_kernel_bytes(block, "selective") == 408 + 552 + 32 + 40   # the core again


def test_flash_attention_and_no_dropout_remove_their_kernels():
    ks = kernels(flash_attention=True, dropout=False)
    assert "softmax" not in ks and "attention-dropout" not in ks and "bias-dropout-add" not in ks
    assert (ks["residual-add"].forward_bytes, ks["residual-add"].backward_bytes) == (96, 0)


def test_sequence_parallelism_splits_the_replicated_kernels():
    full, split = kernels(tp=2), kernels(tp=2, sequence_parallel=True)
    assert split["input-norm"].forward_bytes == full["input-norm"].forward_bytes / 2
    assert split["gelu"].forward_bytes == full["gelu"].forward_bytes   # already f/t


def test_eager_rmsnorm_rope_and_swiglu_cost_more_passes():
    """llama, h = 8, a = 2, a_kv = 1 (d = 4), f = 256 (the 8h/3 rule, to a multiple of 256), t = 1,
    A = 2: HF's RMSNorm 36 bytes an element forward, 76 backward (fused: 4 / 6); RoPE over q + k
    (8 + 4 elements) 10 passes eager, 2 fused; SwiGLU 5Af / 13Af eager, 3Af / 5Af fused."""
    spec = ModelSpec(arch="llama", layers=1, hidden=8, heads=2, kv_heads=1, vocab=10, seq_len=4)
    args = dict(tp=1, seq_len=4, act=2, flash_attention=True, dropout=False)
    eager = {k.name: k for k in block_kernels(spec, kernels="eager", **args)}
    fused = {k.name: k for k in block_kernels(spec, kernels="megatron", **args)}
    assert (eager["input-norm"].forward_bytes, eager["input-norm"].backward_bytes) == (288, 608)
    assert (fused["input-norm"].forward_bytes, fused["input-norm"].backward_bytes) == (32, 48)
    assert eager["rope"].forward_bytes == 10 * 2 * 12 and fused["rope"].forward_bytes == 2 * 2 * 12
    assert (eager["swiglu"].forward_bytes, eager["swiglu"].backward_bytes) == (2560, 6656)
    assert (fused["swiglu"].forward_bytes, fused["swiglu"].backward_bytes) == (1536, 2560)


def test_cross_entropy_and_head():
    """V = 10 padded to 128 at t = 1; fp32 cross-entropy: Megatron-LM 52 bytes an element (A = 2),
    model/tp.py 68; the head adds the final norm (2Ah + 3Ah = 80)."""
    assert cross_entropy_bytes_per_token(TINY, kernels="megatron", tp=1, act=2) == 128 * 52
    assert cross_entropy_bytes_per_token(TINY, kernels="eager", tp=1, act=2) == 128 * 68
    assert head_kernel_bytes(TINY, kernels="megatron", tp=1, act=2) == 128 * 52 + 80


def test_megatron_2021_and_2022_kernels_by_hand():
    """gpt2 (QKV, out-projection and MLP biases), h = 8, f = 32, q' = 8, A = 2, t = 1. 2021: the
    fused LayerNorm's backward reads x and dy in its weight-gradient kernel and again in its
    input-gradient kernel and writes dx: 5Ah (80); QKV's bias added after the GEMM (read, write
    3q' = 24: 96) and its gradient summed (48); the MLP-in, out-projection and MLP-out bias
    gradients read f + 2h = 48 gradients (96); the Q, K, V gradients concatenated (read and write
    24: 96). 2022: the persistent LayerNorm's one pass, 3Ah (48), the rest as 2021. The embeddings'
    dropout: 2 (2A + 1) h = 80 more on the first stage."""
    from llmlaunch.topology.kernels import embedding_kernel_bytes

    old, new = kernels(kernels="megatron-2021"), kernels(kernels="megatron-2022")
    assert (old["input-norm"].forward_bytes, old["input-norm"].backward_bytes) == (32, 80)
    assert (new["input-norm"].forward_bytes, new["input-norm"].backward_bytes) == (32, 48)
    for ks in (old, new):
        assert (ks["qkv-bias"].forward_bytes, ks["qkv-bias"].backward_bytes) == (96, 48)
        assert (ks["bias-grads"].forward_bytes, ks["bias-grads"].backward_bytes) == (0, 96)
        assert (ks["qkv-grad-concat"].forward_bytes, ks["qkv-grad-concat"].backward_bytes) == (0, 96)
    assert "qkv-bias" not in kernels() and "bias-grads" not in kernels()
    base = {n: k for n, k in old.items() if n not in ("qkv-bias", "bias-grads", "qkv-grad-concat")}
    fused = kernels()
    assert all(base[n] == fused[n] for n in fused if "norm" not in n)
    assert embedding_kernel_bytes(TINY, act=2, dropout=True) - embedding_kernel_bytes(TINY, act=2) == 80
    # llama has no biases and RMSNorm: the 2021 set adds only the QKV gradient concatenation
    spec = ModelSpec(arch="llama", layers=1, hidden=8, heads=2, kv_heads=1, vocab=10, seq_len=4)
    args = dict(tp=1, seq_len=4, act=2, flash_attention=True, dropout=False)
    llama = {k.name: k for k in block_kernels(spec, kernels="megatron-2021", **args)}
    assert "qkv-bias" not in llama and "bias-grads" not in llama
    assert llama["input-norm"].backward_bytes == 48 and llama["qkv-grad-concat"].backward_bytes == 64


def test_alibi_bias_copied_into_and_read_from_the_scores():
    """Megatron-DeepSpeed's ALiBi: baddbmm(alibi, q, k^T, beta=1) writes the broadcast bias into the
    2 x 4 scores (A = 2) and the GEMM reads it back: 2A x 8 = 32 bytes a token forward, none
    backward; part of the attention core (selective recompute repeats it); none with flash."""
    from llmlaunch.topology.engines import ENGINES

    ks = kernels(kernels="megatron-2021", score_bias=True)
    assert (ks["score-bias"].forward_bytes, ks["score-bias"].backward_bytes) == (32, 0)
    assert ks["score-bias"].core
    assert "score-bias" not in kernels(kernels="megatron-2021", score_bias=True, flash_attention=True)
    assert ENGINES["megatron-deepspeed-alibi"].score_bias and not ENGINES["megatron-deepspeed"].score_bias


def test_unknown_kernel_set_is_one_line():
    with pytest.raises(ValueError, match="kernel set 'xla' is not one of megatron-2021, megatron-2022, megatron, inductor, llm-foundry, eager"):
        block_kernels(TINY, kernels="xla", tp=1, seq_len=4, act=2, flash_attention=True,
                      dropout=False)
