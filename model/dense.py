"""The model without a pipeline (pp = 1), for DeepSpeed's plain engine (engine(inputs, labels),
engine.backward, engine.step; ZeRO 0-3 and offload).

The same items as the pipeline (model/lm.py: layer_specs) in one nn.Module, tensor-parallel
over an explicit group (model/parallel_groups.py), initialised layout-independently the same way, so
a pp = 1 run and a pipeline run of the same seed start from the same weights. gpt2's tied LM head is
a module of its own (`TiedHead`) that reads the token table it shares; under ZeRO-3 that table is
registered as the head's external parameter, so ZeRO gathers it for the head as for the embedding.
"""
from __future__ import annotations

import torch
from deepspeed.pipe import TiedLayerSpec
from torch import nn

from llmlaunch.topology.model_spec import ModelSpec

from .context_parallel import ContextParallelGroup
from .layers import TokenEmbedding
from .expert_groups import attach_expert_groups, expert_parallel_group
from .lm import layer_specs, load_weights, loss_function, mark_gradient_norm_owners
from .moe import tied_moe_head_forward
from .tp import TensorParallelGroup


class TiedHead(nn.Module):
    """gpt2's LM head: the token embedding's table as the output projection. Holds no parameter of
    its own (the table stays the embedding's; its canonical name is embed.token.weight)."""

    def __init__(self, embedding: TokenEmbedding, carry: bool = False):
        super().__init__()
        self._embedding = [embedding]   # a list: not a submodule, so the table is not re-registered
        self.carry = carry              # an MoE model's: the routing carry passes through

    @property
    def embedding(self) -> TokenEmbedding:
        return self._embedding[0]

    def forward(self, hidden):
        if self.carry:
            return tied_moe_head_forward(self.embedding, hidden)
        return self.embedding.logits(hidden)


def build_dense_items(spec: ModelSpec, tp: TensorParallelGroup, recompute: str,
                      ep=None, cp: ContextParallelGroup | None = None) -> list[nn.Module]:
    """The pipeline's items as modules in order; the tied head reuses the embedding built first."""
    items, tied = [], {}
    for item in layer_specs(spec, tp, recompute, ep, cp):
        if isinstance(item, TiedLayerSpec) and item.key in tied:
            items.append(TiedHead(tied[item.key], carry=spec.moe))
            continue
        module = item.build()
        if isinstance(item, TiedLayerSpec):
            tied[item.key] = module
        items.append(module)
    return items


class DenseLM(nn.Module):
    """forward(inputs [b, s], labels [b, s]) -> the mean next-token loss of this micro-batch (under
    context parallelism: this rank's chunks [b, s/cp] of them, and the mean over those)."""

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup, recompute: str = "none",
                 seed: int = 1234, dtype: torch.dtype = torch.float32, hf_dir=None, ep=None,
                 cp: ContextParallelGroup | None = None):
        super().__init__()
        self.spec = spec
        self.tp_group, self.ep_group, self.cp_group = tp, ep, cp
        self.items = nn.ModuleList(build_dense_items(spec, tp, recompute, ep, cp))
        load_weights(self, spec, tp, seed, hf_dir)
        self.to(dtype)
        self.loss_fn = loss_function(spec, tp)
        mark_gradient_norm_owners(self, spec, tp)

    def logits(self, inputs: torch.Tensor):
        """This TP rank's slice of the logits [b, s, V_p/t] (an MoE model's with the routing carry,
        model/moe.py)."""
        x = inputs
        for item in self.items:
            x = item(x)
        return x

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.logits(inputs), labels)

    def register_zero3_external_parameters(self) -> None:
        """Let ZeRO-3 gather the tied table for the head, which reads it outside the embedding's
        own forward."""
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        for item in self.items:
            if isinstance(item, TiedHead):
                register_external_parameter(item, item.embedding.weight)


def build_dense_model(spec: ModelSpec, groups, recompute: str = "none", seed: int = 1234,
                      dtype: torch.dtype = torch.float32, hf_dir=None) -> DenseLM:
    """The pp = 1 model on a job's TP and CP groups (`groups`: model/parallel_groups.ParallelGroups;
    sequence parallelism and the context-parallel form as its layout says); an MoE model's experts
    split over the layout's expert groups (model/expert_groups.py)."""
    layout = groups.layout
    tp = TensorParallelGroup(groups.get_model_parallel_rank(), groups.get_model_parallel_world_size(),
                             sequence_parallel=layout.sequence_parallel)
    tp.attach(groups.get_model_parallel_group())
    cp = ContextParallelGroup(groups.get_context_parallel_rank(), layout.cp, layout.cp_kind)
    cp.attach(groups.get_context_parallel_group())
    ep = expert_parallel_group(layout, groups.rank)
    model = DenseLM(spec, tp, recompute=recompute, seed=seed, dtype=dtype, hf_dir=hf_dir, ep=ep,
                    cp=cp)
    attach_expert_groups(model, layout, groups.rank, spec, ep)
    return model
