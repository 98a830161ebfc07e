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


def test_unknown_kernel_set_is_one_line():
    with pytest.raises(ValueError, match="kernel set 'xla' is not one of megatron, eager"):
        block_kernels(TINY, kernels="xla", tp=1, seq_len=4, act=2, flash_attention=True,
                      dropout=False)
