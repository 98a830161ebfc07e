"""Floating-point operations of a training step, exact per matrix multiply.

A multiply of [n, k] by [k, m] costs 2nkm FLOPs. Per token and per block, forward (q = a d, the
query width, h unless head_dim is set):
  QKV projection     2 h (q + 2 a_kv d)
  attention scores   2 s q      (Q K^T over all s keys: causal masking is counted in full, as
  attention values   2 s q       Megatron-LM and PaLM count it, although flash kernels skip half;
                                 with a sliding window w, over min(s, w) keys on the windowed layers)
  output projection  2 q h
  MLP                2 h f * (3 for SwiGLU's / GeGLU's gate/up/down, 2 for GELU's fc1/fc2)
  MoE instead        k x one expert's 2 h f_e * (3 or 2), the shared expert's 2 h f_s * (3 or 2)
                     and the router 2 h E: the FLOPs of the active parameters
and the LM head 2 h V per token. Backward is twice the forward (gradients w.r.t. inputs and
weights). Recomputation adds one more forward of what it recomputes.

For gpt2 with f = 4h and full recompute this is exactly Narayanan et al. 2021, eq. (3):
  F = 96 B s L h^2 (1 + s/(6h) + V/(16 L h)) per iteration.
Model FLOPs (no recompute) per token equal PaLM's 6N + 12 L h s (Chowdhery et al. 2022, App. B)
where N counts the matmul parameters (for an MoE model: the active ones).
"""
from __future__ import annotations

import functools

from .model_spec import ModelSpec
from .params import mla_projections

BACKWARD_TO_FORWARD = 2


def mlp_matmul_flops_per_token(spec: ModelSpec, width: int) -> int:
    """Forward FLOPs per token of one MLP of inner width `width`: 2 h width per matrix."""
    return 2 * spec.hidden * width * (3 if spec.gated_mlp else 2)


def moe_matmul_flops_per_token(spec: ModelSpec) -> int:
    """Forward FLOPs per token of an MoE layer's MLP: k routed experts, the shared expert, the
    router's logits 2 h E (Qwen2-MoE's shared gate 2h)."""
    flops = spec.experts_per_token * mlp_matmul_flops_per_token(spec, spec.expert_ffn_hidden)
    flops += 2 * spec.hidden * spec.experts
    if spec.shared_expert_ffn_hidden:
        flops += mlp_matmul_flops_per_token(spec, spec.shared_expert_ffn_hidden)
        flops += 2 * spec.hidden if spec.shared_expert_gate else 0
    return flops


def block_matmul_flops_per_token(spec: ModelSpec) -> int:
    """Forward FLOPs per token of one block's weight GEMMs (QKV, out-proj, MLP or the active
    experts; multi-head latent attention's down- and up-projections). For an MoE model, an MoE
    block (blocks_forward_flops_per_token counts the first dense layers as dense)."""
    h, q = spec.hidden, spec.q_width
    if spec.mla:
        qkv = sum(2 * k * n for _, k, n, _ in mla_projections(spec))
    else:
        qkv = 2 * h * (q + spec.kv_hidden + spec.v_width)
    out_proj = 2 * spec.out_width * h
    mlp = moe_matmul_flops_per_token(spec) if spec.moe else mlp_matmul_flops_per_token(
        spec, spec.ffn_hidden)
    return qkv + out_proj + mlp


def attended_keys(spec: ModelSpec, seq_len: int | None = None) -> float:
    """Keys each query is scored against, averaged over the L layers: s, or min(s, w) on the
    layers with a sliding window w (Mistral v0.1 all layers, Gemma-2 every other one)."""
    s = seq_len or spec.seq_len
    windowed = spec.windowed_layers
    if not windowed or spec.sliding_window >= s:
        return s
    return (windowed * spec.sliding_window + (spec.layers - windowed) * s) / spec.layers


def attention_core_flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> float:
    """Forward FLOPs per token and block of softmax(Q K^T) V: 2 s q for the scores, 2 s a d_v for
    the values (= 2 s q unless the value heads are narrower: MLA's 128 against 192; s:
    attended_keys, the layers' average under a sliding window)."""
    keys = attended_keys(spec, seq_len)
    if keys == int(keys):
        keys = int(keys)
    return 2 * keys * (spec.q_width + spec.out_width)


def block_forward_flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> float:
    return block_matmul_flops_per_token(spec) + attention_core_flops_per_token(spec, seq_len)


def head_forward_flops_per_token(spec: ModelSpec) -> int:
    """LM head logits: 2 h V (the unpadded vocabulary: padding is not model work)."""
    return 2 * spec.hidden * spec.vocab


def blocks_forward_flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> float:
    """All L blocks' forward FLOPs per token, each of its kind (DeepSeek's first dense layers run
    a dense MLP of width f, the rest the active experts)."""
    total = spec.layers * block_forward_flops_per_token(spec, seq_len)
    if spec.moe and spec.dense_layers:
        dense_mlp = mlp_matmul_flops_per_token(spec, spec.ffn_hidden)
        total += spec.dense_layers * (dense_mlp - moe_matmul_flops_per_token(spec))
    return total


def recompute_flops_per_token(spec: ModelSpec, recompute: str, seq_len: int | None = None) -> float:
    """Extra forward FLOPs per token over all blocks that recomputation re-executes in backward:
    full recomputes the whole block, selective only the attention core (Korthikanti et al. 2022)."""
    if recompute == "full":
        return blocks_forward_flops_per_token(spec, seq_len)
    if recompute == "selective":
        return spec.layers * attention_core_flops_per_token(spec, seq_len)
    return 0


@functools.lru_cache(maxsize=1024)
def model_flops_per_token(spec: ModelSpec, seq_len: int | None = None) -> float:
    """Forward + backward FLOPs per token of the model itself (MFU's numerator, no recompute)."""
    forward = blocks_forward_flops_per_token(spec, seq_len) + head_forward_flops_per_token(spec)
    return (1 + BACKWARD_TO_FORWARD) * forward


@functools.lru_cache(maxsize=1024)
def hardware_flops_per_token(spec: ModelSpec, recompute: str, seq_len: int | None = None) -> float:
    """FLOPs per token the hardware executes: model FLOPs plus recomputation (the FLOPs that
    Megatron-LM's and BLOOM's reported TFLOP/s count)."""
    return model_flops_per_token(spec, seq_len) + recompute_flops_per_token(spec, recompute, seq_len)


def megatron_iteration_flops(batch: int, seq_len: int, layers: int, hidden: int, vocab: int) -> float:
    """Narayanan et al. 2021, eq. (3): FLOPs of one iteration of a GPT model with full activation
    recomputation. Kept as the published reference the exact count is tested against."""
    s, l, h = seq_len, layers, hidden
    return 96 * batch * s * l * h ** 2 * (1 + s / (6 * h) + vocab / (16 * l * h))


def training_flops(params: float, tokens: float) -> float:
    """C = 6 N D: forward 2 and backward 4 FLOPs per parameter per token (Kaplan et al. 2020). For
    a Mixture-of-Experts model N is the active parameter count (params.active_params): each token
    goes through k of the E experts only."""
    return 6 * params * tokens


def run_model_flops(spec: ModelSpec, tokens: float, seq_len: int | None = None) -> float:
    """Model FLOPs of training on `tokens` tokens: model_flops_per_token x D. MFU's numerator for a
    whole run, the one definition `plan` (its MFU and horizon), `cost`, the trainer's metrics and
    the pages share; C = 6 N D (training_flops) is printed beside it, and falls short of it by the
    attention core 6 s q L per token and counts the embedding table, which does no matmul."""
    return model_flops_per_token(spec, seq_len) * tokens
