"""The decoder-only language model: its items in order, their layout-independent initialisation,
the loss, and the same model in one process.

Items (DeepSpeed LayerSpecs: built lazily, so each pipeline stage builds only its own), in order:
  gpt2:  [token embedding (tied), positions, block_0 .. block_{L-1}, final norm, LM head (tied)]
  llama: [token embedding, block_0 .. block_{L-1}, final norm, LM head]
The last item outputs this rank's vocab slice of the logits [b, s, V_p/t]; `LMLoss` turns them into
the mean next-token cross-entropy without gathering the vocabulary. Under context parallelism a
rank's items see its chunks of every sequence ([b, s/cp], model/context_parallel.py) and its loss is
the mean over them; the engines average the ranks' losses and gradients over dp x cp, which (every
rank holding s/cp tokens) is the mean over the whole sequence and the global batch.

The engines' adapters build these items: model/pipeline.py splits them into stages (DeepSpeed's
PipelineModule), model/dense.py holds them in one module (DeepSpeed's plain engine, pp = 1).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from deepspeed.pipe import LayerSpec, TiedLayerSpec
from torch import nn

from llmlaunch.topology.layout import Layout
from llmlaunch.topology.model_spec import ModelSpec

from .init import initial_tensor
from .context_parallel import ContextParallelGroup
from .layers import (FinalNorm, LMHead, PositionEmbedding, TokenEmbedding, TransformerBlock,
                     tied_head_forward)
from .moe import MoEFinalNorm, MoELMHead, MoELoss, MoETransformerBlock, tied_moe_head_forward
from .moe_dispatch import ExpertParallelGroup
from .sharding import canonical_named_parameters, canonical_shapes, load_canonical, tp_split
from .tp import TensorParallelGroup, vocab_parallel_cross_entropy

TIED_KEY = "embed"


class LMLoss:
    """Mean next-token cross-entropy of vocab-parallel logits: loss_fn(logits [b, s, V_p/t],
    labels [b, s]) as DeepSpeed's pipeline engine calls it on the last stage."""

    def __init__(self, vocab: int, tp: TensorParallelGroup):
        self.vocab = vocab
        self.tp = tp

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_cross_entropy(logits, labels, self.tp, self.vocab).mean()


def check_layout(spec: ModelSpec, pp: int, tp: int) -> None:
    """Raise ValueError when tp does not divide the heads, KV heads and MLP width, or pp > L
    (topology.layout.Layout.check_model)."""
    Layout(dp=1, pp=pp, tp=tp).check_model(spec)


def layer_specs(spec: ModelSpec, tp: TensorParallelGroup, recompute: str,
                ep: ExpertParallelGroup | None = None,
                cp: ContextParallelGroup | None = None) -> list[LayerSpec]:
    """The items; see the module docstring. `tp` carries sequence parallelism, `cp` (None: 1) the
    context-parallel group. An MoE model's blocks, final norm and head pass the routing carry along
    (model/moe.py), its experts split over `ep` (one rank when not given)."""
    if spec.tied_embeddings:
        items = [TiedLayerSpec(TIED_KEY, TokenEmbedding, spec, tp, tied_weight_attr=["weight"])]
    else:
        items = [LayerSpec(TokenEmbedding, spec, tp)]
    if spec.learned_positions:
        items.append(LayerSpec(PositionEmbedding, spec, tp, cp))
    if spec.moe:
        ep = ep or ExpertParallelGroup()
        items += [LayerSpec(MoETransformerBlock, spec, tp, i, recompute, ep, cp)
                  for i in range(spec.layers)]
    else:
        items += [LayerSpec(TransformerBlock, spec, tp, i, recompute, cp)
                  for i in range(spec.layers)]
    items.append(LayerSpec(MoEFinalNorm if spec.moe else FinalNorm, spec, tp))
    if spec.tied_embeddings:
        items.append(TiedLayerSpec(TIED_KEY, TokenEmbedding, spec, tp, tied_weight_attr=["weight"],
                                   forward_fn=tied_moe_head_forward if spec.moe else tied_head_forward))
    else:
        items.append(LayerSpec(MoELMHead if spec.moe else LMHead, spec, tp))
    return items


def loss_function(spec: ModelSpec, tp: TensorParallelGroup):
    """The loss the last item's output goes into: LMLoss, or MoELoss with the router's losses."""
    return MoELoss(spec, tp) if spec.moe else LMLoss(spec.vocab, tp)


def leading_items(spec: ModelSpec) -> int:
    """Items before the first block: the token embedding, plus positions for gpt2."""
    return 2 if spec.learned_positions else 1


def initialise(module: nn.Module, spec: ModelSpec, tp: TensorParallelGroup, seed: int) -> None:
    """Layout-independent initialisation (model/init.py)."""
    shapes = canonical_shapes(spec)
    load_canonical(module, spec, tp, lambda name: initial_tensor(spec, name, shapes[name], seed))


def load_weights(module: nn.Module, spec: ModelSpec, tp: TensorParallelGroup, seed: int,
                 hf_dir=None) -> None:
    """Seeded initialisation, or the weights of a local HF directory when hf_dir is given."""
    if hf_dir is None:
        initialise(module, spec, tp, seed)
    else:
        from .hf_import import HFWeights  # transformers/safetensors only when importing
        weights = HFWeights(hf_dir, spec)
        load_canonical(module, spec, tp, weights.canonical_tensor)


def mark_gradient_norm_owners(module: nn.Module, spec: ModelSpec, tp: TensorParallelGroup) -> None:
    """Tag parameters so DeepSpeed's global gradient norm counts every element of the model once.

    Two attributes per parameter:
    - `tensor_parallel_sharded`: this rank holds a TP slice (model/sharding.py), for our own code.
    - `model_parallel`: this rank's gradient enters the norm. DeepSpeed sums squared norms over the
      grid's model-parallel group (pipe x TP) and keeps a parameter when `model_parallel` is set
      or the rank is "rank 0". ZeRO-1 and the bf16 optimizer take that rank from the TP slice
      group, but the fp32 path without ZeRO (`runtime/utils.clip_grad_norm_`) takes it from the
      pipe x TP group, so only stage 0's replicated parameters would count. Setting it on every
      parameter the rank owns - a TP slice, or a replicated parameter on TP rank 0 - and not on
      the last stage's copy of a tied weight (`ds_pipe_replicated`, which only ZeRO checks) makes
      both paths count each parameter exactly once.
    """
    for name, param in canonical_named_parameters(module):
        sharded = tp_split(spec, name) is not None
        pipe_copy = getattr(param, "ds_pipe_replicated", False)
        param.tensor_parallel_sharded = sharded
        param.model_parallel = (sharded or tp.rank == 0) and not pipe_copy


def count_parameters(module: nn.Module) -> int:
    """Sum of the numels of a module's (distinct) parameters."""
    return sum(p.numel() for p in module.parameters())


def build_items(items: list[LayerSpec]) -> tuple[list[nn.Module], list[Callable]]:
    """Build items the way PipelineModule does on one stage: a tied module once, its later uses
    through forward_fn. Returns (distinct modules, forward callables in order)."""
    modules, forwards, tied = [], [], {}
    for item in items:
        if isinstance(item, TiedLayerSpec):
            if item.key not in tied:
                tied[item.key] = item.build()
                modules.append(tied[item.key])
            module = tied[item.key]
            forwards.append(module if item.forward_fn is None
                            else functools.partial(item.forward_fn, module))
        else:
            module = item.build()
            modules.append(module)
            forwards.append(module)
    return modules, forwards


class LocalLM(nn.Module):
    """The same model in one process without DeepSpeed's engine (tp=1, no pipeline): evaluation,
    export checks and tests. forward(tokens [b, s]) -> logits [b, s, V_p] (an MoE model:
    (logits, counts, sums), model/moe.py; `logits_of` takes the logits)."""

    def __init__(self, spec: ModelSpec, recompute: str = "none", seed: int = 1234,
                 dtype: torch.dtype = torch.float32, hf_dir=None):
        super().__init__()
        self.spec = spec
        self.tp_group = TensorParallelGroup()
        modules, self._forwards = build_items(layer_specs(spec, self.tp_group, recompute))
        self.items = nn.ModuleList(modules)
        load_weights(self, spec, self.tp_group, seed, hf_dir)
        self.to(dtype)
        self.loss_fn = loss_function(spec, self.tp_group)

    def forward(self, tokens):
        x = tokens
        for forward in self._forwards:
            x = forward(x)
        return x


def logits_of(output):
    """The logits of the last item's output (an MoE model's carries the routing statistics too)."""
    return output[0] if isinstance(output, tuple) else output
