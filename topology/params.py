"""Parameter counts: whole model and per tensor-parallel rank, total and active per token.

These are the counts the model builder (model/) must reproduce exactly; tests/torch/
test_model_params.py compares them with the real module, and tests/torch/test_hf_counts.py with
transformers' own models of each family. Symbols as in model_spec: L, h, a, a_kv, d, f, V, s, E, k,
f_e, f_s, t (TP degree); q = a d (h unless head_dim is set).

gpt2 block (Radford et al. 2019; 12h^2 + 13h with f = 4h, Kaplan et al. 2020 Table 1 gives 12 L h^2):
  LN1, LN2 (2h each) + QKV h(q + 2 a_kv d) + its bias + out-proj q h + h + fc1 hf + f + fc2 fh + h
llama block (Touvron et al. 2023):
  2 RMSNorm (h each) + q h q + k, v h a_kv d each + o q h + gate, up, down 3hf (no biases)
The other families change terms: QKV bias q + 2 a_kv d (Qwen2), QK-norm 2d (Qwen3), four norms per
block (Gemma-2), biases on every linear (GPT-NeoX). An MoE layer (Mixtral, Qwen2-MoE, DeepSeek)
replaces the MLP by E experts of width f_e, a router Linear(h, E) and optionally a shared expert of
width f_s (with a gate Linear(h, 1) in Qwen2-MoE). Under TP every expert is split like a dense MLP
and the router replicated; these counts hold every expert (expert parallelism, which leaves E/ep
of them on a GPU, is topology/experts.py's).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .model_spec import ModelSpec

# Megatron-LM pads the vocabulary to a multiple of 128 * t so that each TP rank gets an equal,
# aligned slice (`--make-vocab-size-divisible-by 128`).
VOCAB_PAD_MULTIPLE = 128


def padded_vocab(vocab: int, tp: int = 1, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    """Smallest multiple of (multiple * tp) that is >= vocab. E.g. 50257, t=8 -> 51200."""
    unit = multiple * tp
    return unit * math.ceil(vocab / unit)


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one transformer block held by one TP rank, split by how TP treats them."""

    sharded: int
    """Parameters divided across the t ranks (this rank's slice)."""
    replicated: int
    """Parameters every TP rank holds in full (norms, row-parallel biases, routers)."""

    @property
    def total(self) -> int:
        return self.sharded + self.replicated


def norm_params(spec: ModelSpec, width: int | None = None) -> int:
    """One norm over `width` features (h by default): LayerNorm weight + bias, RMSNorm weight."""
    width = spec.hidden if width is None else width
    return 2 * width if spec.norm == "layernorm" else width


def mlp_params(spec: ModelSpec, width: int) -> tuple[int, int]:
    """(sharded, replicated) of one MLP of inner width `width`: 2 or 3 matrices h x width, and with
    biases (gpt2, GPT-NeoX) the column-parallel biases (sharded) and the output bias (replicated)."""
    matrices = (3 if spec.gated_mlp else 2) * spec.hidden * width
    if spec.biases:
        return matrices + (2 if spec.gated_mlp else 1) * width, spec.hidden
    return matrices, 0


def mla_attention_params(spec: ModelSpec) -> tuple[int, int]:
    """(sharded, replicated) of one multi-head latent attention sub-layer (DeepSeek-V2/V3, as
    transformers' DeepseekV3Attention builds it), r_q, r_kv the ranks, d = qk_nope + qk_rope,
    d_r = qk_rope, d_v the value head: the query either full-rank, q_proj h a d, or compressed,
    q_a_proj h r_q + its RMSNorm r_q + q_b_proj r_q a d; kv_a_proj_with_mqa h (r_kv + d_r) + its
    RMSNorm r_kv; kv_b_proj r_kv a (d - d_r + d_v); o_proj a d_v h. Under TP (Megatron-Core's MLA)
    the up-projections and o_proj split over the heads; the down-projections and their norms are
    replicated."""
    h, a, d = spec.hidden, spec.heads, spec.head_dim
    nope = d - spec.qk_rope_head_dim
    sharded = spec.kv_lora_rank * a * (nope + spec.value_head_dim) + spec.out_width * h
    replicated = h * (spec.kv_lora_rank + spec.qk_rope_head_dim) + spec.kv_lora_rank
    if spec.q_lora_rank:
        sharded += spec.q_lora_rank * a * d
        replicated += h * spec.q_lora_rank + spec.q_lora_rank
    else:
        sharded += h * a * d
    return sharded, replicated


def attention_params(spec: ModelSpec) -> tuple[int, int]:
    """(sharded, replicated) of one attention sub-layer: QKV h(q + 2 a_kv d), its bias, out-proj
    q h and its bias (replicated, row-parallel), QK-norm weights 2d (replicated); multi-head latent
    attention: mla_attention_params."""
    if spec.mla:
        return mla_attention_params(spec)
    h, q, kv = spec.hidden, spec.q_width, spec.kv_hidden
    sharded = (q + 2 * kv) * h + q * h
    if spec.qkv_bias:
        sharded += q + 2 * kv
    replicated = h if spec.biases else 0
    if spec.qk_norm:
        replicated += 2 * norm_params(spec, spec.head_dim)
    return sharded, replicated


def moe_mlp_params(spec: ModelSpec) -> tuple[int, int]:
    """(sharded, replicated) of an MoE layer's MLP: E experts of width f_e, the shared expert of
    width f_s, the router h E and Qwen2-MoE's shared-expert gate h (replicated)."""
    expert_sharded, expert_replicated = mlp_params(spec, spec.expert_ffn_hidden)
    sharded = spec.experts * expert_sharded
    replicated = spec.experts * expert_replicated + spec.hidden * spec.experts
    if spec.shared_expert_ffn_hidden:
        shared_sharded, shared_replicated = mlp_params(spec, spec.shared_expert_ffn_hidden)
        sharded += shared_sharded
        replicated += shared_replicated + (spec.hidden if spec.shared_expert_gate else 0)
    return sharded, replicated


def _split(sharded: int, replicated: int, tp: int) -> LayerParams:
    if sharded % tp:
        raise ValueError(f"layer parameters {sharded} do not split over tp={tp}")
    return LayerParams(sharded=sharded // tp, replicated=replicated)


@functools.lru_cache(maxsize=1024)
def layer_params(spec: ModelSpec, tp: int = 1) -> LayerParams:
    """One block's parameters on one of `tp` ranks (tp=1: the full block). For an MoE model, an MoE
    block (the larger kind: the planner holds every block as one, see dense_layer_params)."""
    attn_sharded, attn_replicated = attention_params(spec)
    mlp_sharded, mlp_replicated = (moe_mlp_params(spec) if spec.moe
                                   else mlp_params(spec, spec.ffn_hidden))
    norms = spec.block_norms * norm_params(spec)
    return _split(attn_sharded + mlp_sharded, attn_replicated + mlp_replicated + norms, tp)


@functools.lru_cache(maxsize=256)
def dense_variant(spec: ModelSpec) -> ModelSpec:
    """The spec with a dense MLP of width f in every block: what an MoE model's first dense_layers
    blocks are (the spec itself for a dense model)."""
    if not spec.moe:
        return spec
    return spec.replace(experts=0, experts_per_token=0, expert_ffn_hidden=0,
                        shared_expert_ffn_hidden=0, shared_expert_gate=False, dense_layers=0)


def mla_projections(spec: ModelSpec) -> list[tuple[str, int, int, bool]]:
    """(name, input width, output width, split over TP) of an MLA block's projections in the order
    they run (mla_attention_params: the GEMMs gemms.py prices and the FLOPs flops.py counts)."""
    h, a, d = spec.hidden, spec.heads, spec.head_dim
    nope = d - spec.qk_rope_head_dim
    out = ([("q-down", h, spec.q_lora_rank, False), ("q-up", spec.q_lora_rank, a * d, True)]
           if spec.q_lora_rank else [("q-proj", h, a * d, True)])
    return out + [("kv-down", h, spec.kv_lora_rank + spec.qk_rope_head_dim, False),
                  ("kv-up", spec.kv_lora_rank, a * (nope + spec.value_head_dim), True)]


@functools.lru_cache(maxsize=4096)
def dense_layer_params(spec: ModelSpec, tp: int = 1) -> LayerParams:
    """A block with a dense MLP of width f: every block of a dense model, the first dense_layers
    blocks of an MoE model."""
    return layer_params(dense_variant(spec), tp)


def embedding_params(spec: ModelSpec, tp: int = 1, pad: bool = True) -> int:
    """Input embedding on one TP rank: the vocab-parallel token table plus learned positions (gpt2,
    replicated). pad=False gives the unpadded count of the published model."""
    vocab = padded_vocab(spec.vocab, tp) if pad else spec.vocab
    positions = spec.seq_len * spec.hidden if spec.learned_positions else 0
    return vocab // (tp if pad else 1) * spec.hidden + positions


def head_params(spec: ModelSpec, tp: int = 1, pad: bool = True, separate_stage: bool = False) -> int:
    """Final norm and LM head on one TP rank. With tied embeddings the head reuses the token table,
    so it adds no parameters to the model; a last pipeline stage that is not the first one still
    holds its own copy (separate_stage=True) for memory purposes."""
    norm = norm_params(spec)
    if spec.tied_embeddings and not separate_stage:
        return norm
    vocab = padded_vocab(spec.vocab, tp) if pad else spec.vocab
    return norm + vocab // (tp if pad else 1) * spec.hidden


def blocks_params(spec: ModelSpec) -> int:
    """All L blocks, each of its kind (MoE blocks and the dense ones before them)."""
    if not spec.moe:
        return spec.layers * layer_params(spec).total
    return (spec.moe_layers * layer_params(spec).total
            + spec.dense_layers * dense_layer_params(spec).total)


def total_params(spec: ModelSpec) -> int:
    """Parameters of the published (unpadded) model: what papers and HF report."""
    return blocks_params(spec) + embedding_params(spec, pad=False) + head_params(spec, pad=False)


def inactive_expert_params(spec: ModelSpec) -> int:
    """Parameters a token does not go through: in each MoE layer the E - k routed experts it is not
    sent to (0 for a dense model)."""
    if not spec.moe:
        return 0
    expert = sum(mlp_params(spec, spec.expert_ffn_hidden))
    return spec.moe_layers * (spec.experts - spec.experts_per_token) * expert


def active_params(spec: ModelSpec, total: int | None = None) -> int:
    """Parameters used per token, N_active = N - inactive experts (Fedus et al. 2022's "activated
    parameters"; Mixtral-8x7B: 12.9B of 46.7B). `total`: an exact count to start from (transformers'
    meta-device count), else total_params(spec). Equal to the total for a dense model."""
    return (total_params(spec) if total is None else total) - inactive_expert_params(spec)
