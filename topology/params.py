"""Parameter counts: whole model and per tensor-parallel rank.

These are the counts the model builder (model/) must reproduce exactly; tests/test_model_params.py
compares them with the real module. Symbols as in model_spec: L, h, a_kv, d, f, V, s, t (TP degree).

gpt2 block (Radford et al. 2019; 12h^2 + 13h with f = 4h, Kaplan et al. 2020 Table 1 gives 12 L h^2):
  LN1, LN2 (2h each) + QKV h(h + 2 a_kv d) + its bias + out-proj h^2 + h + fc1 hf + f + fc2 fh + h
llama block (Touvron et al. 2023):
  2 RMSNorm (h each) + q h^2 + k, v h*a_kv*d each + o h^2 + gate, up, down 3hf (no biases)
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
    """Parameters every TP rank holds in full (norms, row-parallel biases)."""

    @property
    def total(self) -> int:
        return self.sharded + self.replicated


@functools.lru_cache(maxsize=1024)
def layer_params(spec: ModelSpec, tp: int = 1) -> LayerParams:
    """One block's parameters on one of `tp` ranks (tp=1: the full block)."""
    h, f, kv = spec.hidden, spec.ffn_hidden, spec.kv_hidden
    qkv_out = h + 2 * kv
    if spec.arch == "gpt2":
        sharded = qkv_out * h + qkv_out + h * h + h * f + f + f * h  # QKV w+b, out w, fc1 w+b, fc2 w
        replicated = 4 * h + 2 * h  # two LayerNorms (weight+bias), out-proj and fc2 biases
    else:
        sharded = qkv_out * h + h * h + 3 * h * f
        replicated = 2 * h  # two RMSNorm weights
    if sharded % tp:
        raise ValueError(f"layer parameters {sharded} do not split over tp={tp}")
    return LayerParams(sharded=sharded // tp, replicated=replicated)


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
    norm = 2 * spec.hidden if spec.arch == "gpt2" else spec.hidden
    if spec.tied_embeddings and not separate_stage:
        return norm
    vocab = padded_vocab(spec.vocab, tp) if pad else spec.vocab
    return norm + vocab // (tp if pad else 1) * spec.hidden


def total_params(spec: ModelSpec) -> int:
    """Parameters of the published (unpadded) model: what papers and HF report."""
    return (spec.layers * layer_params(spec).total + embedding_params(spec, pad=False)
            + head_params(spec, pad=False))

