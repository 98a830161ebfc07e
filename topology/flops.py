"""Floating-point operations of a training step, exact per matrix multiply.

A multiply of [n, k] by [k, m] costs 2nkm FLOPs. Per token and per block, forward:
  QKV projection     2 h (h + 2 a_kv d)
  attention scores   2 s h      (Q K^T over all s keys: causal masking is counted in full, as
  attention values   2 s h       Megatron-LM and PaLM count it, although flash kernels skip half)
  output projection  2 h^2
  MLP                2 h f * (3 for SwiGLU's gate/up/down, 2 for GELU's fc1/fc2)
and the LM head 2 h V per token. Backward is twice the forward (gradients w.r.t. inputs and
weights). Recomputation adds one more forward of what it recomputes.

For gpt2 with f = 4h and full recomputation this is exactly Narayanan et al. 2021, eq. (3):
  F = 96 B s L h^2 (1 + s/(6h) + V/(16 L h)) per iteration.
Model FLOPs (no recompute) per token equal PaLM's 6N + 12 L h s (Chowdhery et al. 2022, App. B)
where N counts the matmul parameters.
"""
from __future__ import annotations

from .model_spec import ModelSpec

BACKWARD_TO_FORWARD = 2


def block_matmul_flops_per_token(spec: ModelSpec) -> int:
    """Forward FLOPs per token of one block's weight GEMMs (QKV, out-proj, MLP)."""
    h, f = spec.hidden, spec.ffn_hidden
    qkv = 2 * h * (h + 2 * spec.kv_hidden)
    out_proj = 2 * h * h
    mlp = 2 * h * f * (3 if spec.gated_mlp else 2)
    return qkv + out_proj + mlp


def attention_core_flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> int:
    """Forward FLOPs per token of softmax(Q K^T) V: 2 s h for the scores, 2 s h for the values."""
    s = seq_len or spec.seq_len
    return 4 * s * spec.hidden


def block_forward_flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> int:
    return block_matmul_flops_per_token(spec) + attention_core_flops_per_token(spec, seq_len)


def head_forward_flops_per_token(spec: ModelSpec) -> int:
    """LM head logits: 2 h V (the unpadded vocabulary: padding is not model work)."""
    return 2 * spec.hidden * spec.vocab


def recompute_flops_per_token(spec: ModelSpec, recompute: str, seq_len: int | None = None) -> int:
    """Extra forward FLOPs per token over all blocks that recomputation re-executes in backward:
    full recomputes the whole block, selective only the attention core (Korthikanti et al. 2022)."""
    if recompute == "full":
        return spec.layers * block_forward_flops_per_token(spec, seq_len)
    if recompute == "selective":
        return spec.layers * attention_core_flops_per_token(spec, seq_len)
    return 0


def model_flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> int:
    """Forward + backward FLOPs per token of the model itself (MFU's numerator, no recompute)."""
    forward = spec.layers * block_forward_flops_per_token(spec, seq_len) + head_forward_flops_per_token(spec)
    return (1 + BACKWARD_TO_FORWARD) * forward


def hardware_flops_per_token(spec: ModelSpec, recompute: str, seq_len: int | None = None) -> int:
    """FLOPs per token the hardware executes: model FLOPs plus recomputation (the FLOPs that
    Megatron-LM's and BLOOM's reported TFLOP/s count)."""
    return model_flops_per_token(spec, seq_len) + recompute_flops_per_token(spec, recompute, seq_len)


def megatron_iteration_flops(batch: int, seq_len: int, layers: int, hidden: int, vocab: int) -> float:
    """Narayanan et al. 2021, eq. (3): FLOPs of one iteration of a GPT model with full activation
    recomputation. Kept as the published reference the exact count is tested against."""
    s, l, h = seq_len, layers, hidden
    return 96 * batch * s * l * h ** 2 * (1 + s / (6 * h) + vocab / (16 * l * h))


def training_flops(params: float, tokens: float) -> float:
    """C = 6 N D: forward 2 and backward 4 FLOPs per parameter per token (Kaplan et al. 2020)."""
    return 6 * params * tokens
