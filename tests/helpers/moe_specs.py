"""Tiny Mixture-of-Experts shapes the model tests share: a Mixtral (4 experts, top-2) and a
Qwen3-MoE (QK-norm, 8 experts, top-4, un-normalised top-k weights, as transformers' class holds it:
no shared expert), at hidden `hidden`."""
from __future__ import annotations

from llmlaunch.topology.model_spec import ModelSpec


def tiny_moe_families(hidden: int, vocab: int, seq_len: int) -> dict[str, ModelSpec]:
    return {
        "mixtral": ModelSpec(arch="mixtral", layers=2, hidden=hidden, heads=4, kv_heads=2,
                             vocab=vocab, seq_len=seq_len, ffn_hidden=96, experts=4,
                             experts_per_token=2, expert_ffn_hidden=96, rope_theta=1e6,
                             norm_eps=1e-5),
        "qwen3_moe": ModelSpec(arch="qwen3_moe", layers=2, hidden=hidden, heads=4, kv_heads=2,
                               head_dim=16, vocab=vocab, seq_len=seq_len, ffn_hidden=96,
                               experts=8, experts_per_token=4, expert_ffn_hidden=32,
                               norm_topk_prob=False, rope_theta=1e6, norm_eps=1e-6),
    }
