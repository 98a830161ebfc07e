"""Canonical parameter names and how each full tensor maps to its tensor-parallel slices.

The *canonical* state of a model is its full, unpadded tensors under layout-free names, e.g.
`blocks.3.attn.qkv.weight` [h + 2*a_kv*d, h]. Every layout (any pp, tp) is a slicing of it, which is
what makes initialisation, HF import and HF export independent of the layout:

    canonical --shard_tensor(rank)--> one rank's parameter --merge_shards(all ranks)--> canonical

Names (L blocks, local names of model/layers.py prefixed by the layer's canonical prefix):
  embed.token.weight [V, h]              vocab-parallel (rows, padded to padded_vocab(V, t))
  embed.position.weight [s, h]           gpt2; replicated
  blocks.i.ln1.weight / .bias            replicated (bias: gpt2)
  blocks.i.attn.qkv.weight [q+2kv, h]    column-parallel; q, k and v rows split separately
                                         (q = a*d: h unless head_dim is set; kv = a_kv*d)
  blocks.i.attn.qkv.bias [q+2kv]         gpt2, qwen2; split like the weight rows
  blocks.i.attn.q_norm.weight [d]        qwen3 (QK-norm, per head dim); replicated
  blocks.i.attn.k_norm.weight [d]        qwen3; replicated
  blocks.i.attn.out.weight [h, q]        row-parallel (columns); .bias (gpt2) replicated
  blocks.i.ln2.weight / .bias            replicated
  blocks.i.mlp.fc1.weight [f, h], .bias  gpt2; column-parallel
  blocks.i.mlp.fc2.weight [h, f]         gpt2; row-parallel; .bias replicated
  blocks.i.mlp.gate_up.weight [2f, h]    llama; column-parallel, gate and up rows split separately
  blocks.i.mlp.down.weight [h, f]        llama; row-parallel
  An MoE block (mixtral, qwen2_moe, qwen3_moe; from block dense_layers on) has, instead of mlp.*:
  blocks.i.mlp.router.weight [E, h]      replicated
  blocks.i.mlp.experts.e.gate_up.weight  [2f_e, h], e < E; column-parallel like a dense gate_up;
                                         held by the ep rank whose experts include e
  blocks.i.mlp.experts.e.down.weight     [h, f_e]; row-parallel
  blocks.i.mlp.shared.gate_up.weight / .down.weight   the shared expert (f_s), as a dense MLP
  blocks.i.mlp.shared_gate.weight [1, h] Qwen2-MoE's shared-expert gate; replicated
  final_norm.weight / .bias              replicated (bias: gpt2)
  head.weight [V, h]                     untied models (gpt2, and any tied llama-family model,
                                         use embed.token.weight as the head)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.params import padded_vocab

from .tp import TensorParallelGroup


@dataclass(frozen=True)
class TPSplit:
    """How a full tensor is divided over t TP ranks.

    The tensor is cut along `dim` into consecutive `segments` (e.g. q, k, v of a fused QKV); each
    segment is split into t equal chunks and rank i's tensor is its chunk of every segment,
    concatenated. With `vocab` > 0 the dimension is a vocabulary of that size, zero-padded to
    padded_vocab(vocab, t) before splitting (and trimmed again when merging).
    """

    dim: int
    segments: tuple[int, ...]
    vocab: int = 0


def moe_parameter_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Full shapes of an MoE block's MLP parameters, by local name."""
    h, fe, fs = spec.hidden, spec.expert_ffn_hidden, spec.shared_expert_ffn_hidden
    shapes = {"mlp.router.weight": (spec.experts, h)}
    for e in range(spec.experts):
        shapes.update({f"mlp.experts.{e}.gate_up.weight": (2 * fe, h),
                       f"mlp.experts.{e}.down.weight": (h, fe)})
    if fs:
        shapes.update({"mlp.shared.gate_up.weight": (2 * fs, h), "mlp.shared.down.weight": (h, fs)})
    if spec.shared_expert_gate:
        shapes["mlp.shared_gate.weight"] = (1, h)
    return shapes


EXPERT_NAME = re.compile(r"^blocks\.\d+\.mlp\.experts\.(\d+)\.")


def expert_of(name: str) -> int | None:
    """The routed expert a canonical parameter belongs to (None: not an expert's)."""
    match = EXPERT_NAME.match(name)
    return int(match[1]) if match else None


def is_moe_block(spec: ModelSpec, block: int) -> bool:
    """Whether block `block` of `spec` holds experts (an MoE model's blocks from dense_layers on)."""
    return spec.moe and block >= spec.dense_layers


def block_parameter_shapes(spec: ModelSpec, moe: bool = False) -> dict[str, tuple[int, ...]]:
    """Full shapes of one block's parameters, by local name (see the module docstring); `moe`: an
    MoE block's."""
    h, f, q, kv = spec.hidden, spec.ffn_hidden, spec.q_width, spec.kv_hidden
    layernorm = spec.norm == "layernorm"
    shapes = {"ln1.weight": (h,)}
    if layernorm:
        shapes["ln1.bias"] = (h,)
    shapes["attn.qkv.weight"] = (q + 2 * kv, h)
    if spec.qkv_bias:
        shapes["attn.qkv.bias"] = (q + 2 * kv,)
    if spec.qk_norm:
        shapes.update({"attn.q_norm.weight": (spec.head_dim,), "attn.k_norm.weight": (spec.head_dim,)})
    shapes["attn.out.weight"] = (h, q)
    if spec.biases:
        shapes["attn.out.bias"] = (h,)
    shapes["ln2.weight"] = (h,)
    if layernorm:
        shapes["ln2.bias"] = (h,)
    if moe:
        shapes.update(moe_parameter_shapes(spec))
    elif spec.gated_mlp:
        shapes.update({"mlp.gate_up.weight": (2 * f, h), "mlp.down.weight": (h, f)})
    else:
        shapes.update({"mlp.fc1.weight": (f, h), "mlp.fc1.bias": (f,), "mlp.fc2.weight": (h, f),
                       "mlp.fc2.bias": (h,)})
    return shapes


def canonical_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter of the model with its full (unpadded) shape, in model order."""
    h = spec.hidden
    shapes = {"embed.token.weight": (spec.vocab, h)}
    if spec.learned_positions:
        shapes["embed.position.weight"] = (spec.seq_len, h)
    for block in range(spec.layers):
        for name, shape in block_parameter_shapes(spec, is_moe_block(spec, block)).items():
            shapes[f"blocks.{block}.{name}"] = shape
    shapes["final_norm.weight"] = (h,)
    if spec.norm == "layernorm":
        shapes["final_norm.bias"] = (h,)
    if not spec.tied_embeddings:
        shapes["head.weight"] = (spec.vocab, h)
    return shapes


def tp_split(spec: ModelSpec, name: str) -> TPSplit | None:
    """How canonical parameter `name` is split over TP ranks; None when every rank holds it all."""
    q, f, kv = spec.q_width, spec.ffn_hidden, spec.kv_hidden
    if name in ("embed.token.weight", "head.weight"):
        return TPSplit(dim=0, segments=(spec.vocab,), vocab=spec.vocab)
    if not name.startswith("blocks."):
        return None
    local = name.split(".", 2)[2]
    if local.startswith("mlp.experts."):
        fe = spec.expert_ffn_hidden
        return TPSplit(0, (fe, fe)) if local.endswith("gate_up.weight") else TPSplit(1, (fe,))
    if local.startswith("mlp.shared."):
        fs = spec.shared_expert_ffn_hidden
        return TPSplit(0, (fs, fs)) if local.endswith("gate_up.weight") else TPSplit(1, (fs,))
    return {
        "attn.qkv.weight": TPSplit(0, (q, kv, kv)),
        "attn.qkv.bias": TPSplit(0, (q, kv, kv)),
        "attn.out.weight": TPSplit(1, (q,)),
        "mlp.fc1.weight": TPSplit(0, (f,)),
        "mlp.fc1.bias": TPSplit(0, (f,)),
        "mlp.fc2.weight": TPSplit(1, (f,)),
        "mlp.gate_up.weight": TPSplit(0, (f, f)),
        "mlp.down.weight": TPSplit(1, (f,)),
    }.get(local)


def shard_tensor(full: torch.Tensor, split: TPSplit | None, rank: int, size: int) -> torch.Tensor:
    """Rank `rank`'s slice (a new tensor) of the full canonical tensor."""
    if split is None:
        return full.clone()
    if split.vocab:
        padding = padded_vocab(split.vocab, size) - full.shape[split.dim]
        pad_shape = list(full.shape)
        pad_shape[split.dim] = padding
        full = torch.cat([full, full.new_zeros(pad_shape)], dim=split.dim)
        segments = (full.shape[split.dim],)
    else:
        segments = split.segments
    parts = [segment.chunk(size, dim=split.dim)[rank]
             for segment in full.split(list(segments), dim=split.dim)]
    return torch.cat(parts, dim=split.dim).clone()


def merge_shards(shards: list[torch.Tensor], split: TPSplit | None) -> torch.Tensor:
    """The full canonical tensor from every TP rank's slice, in rank order (inverse of
    shard_tensor; padding removed)."""
    if split is None:
        return shards[0].clone()
    size = len(shards)
    if split.vocab:
        full = torch.cat(shards, dim=split.dim)
        return full.narrow(split.dim, 0, split.vocab).clone()
    per_rank = [segment // size for segment in split.segments]
    pieces = [shard.split(per_rank, dim=split.dim) for shard in shards]
    segments = [torch.cat([pieces[rank][s] for rank in range(size)], dim=split.dim)
                for s in range(len(split.segments))]
    return torch.cat(segments, dim=split.dim)


def pipeline_layer_prefixes(spec: ModelSpec) -> list[str | None]:
    """Canonical prefix of each pipeline item by index (model/lm.py's item order), which is
    how DeepSpeed names its per-layer checkpoint files (layer_XX-model_YY-model_states.pt). None
    marks gpt2's tied head, which holds no parameters of its own."""
    prefixes = ["embed.token."]
    if spec.learned_positions:
        prefixes.append("embed.position.")
    prefixes += [f"blocks.{block}." for block in range(spec.layers)]
    prefixes.append("final_norm.")
    prefixes.append(None if spec.tied_embeddings else "head.")
    return prefixes


def canonical_named_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(canonical name, parameter) for every parameter a rank holds, each once: layers carry a
    `canonical_prefix` (model/layers.py) and their parameters' local names complete it."""
    seen = set()
    for layer in module.modules():
        prefix = getattr(layer, "canonical_prefix", None)
        if prefix is None:
            continue
        for local_name, param in layer.named_parameters():
            if id(param) not in seen:
                seen.add(id(param))
                yield prefix + local_name, param


def load_canonical(module: nn.Module, spec: ModelSpec, tp: TensorParallelGroup,
                   full_tensor: Callable[[str], torch.Tensor]) -> None:
    """Set each parameter to this TP rank's slice of `full_tensor(canonical name)`."""
    with torch.no_grad():
        for name, param in canonical_named_parameters(module):
            shard = shard_tensor(full_tensor(name), tp_split(spec, name), tp.rank, tp.size)
            if shard.shape != param.shape:
                raise ValueError(f"{name}: the rank's slice has shape {tuple(shard.shape)}, "
                                 f"the parameter {tuple(param.shape)}")
            param.copy_(shard)
