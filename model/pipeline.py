"""The pipeline adapter: the model's items (model/lm.py) as a DeepSpeed PipelineModule.

Stage i holds split_stages(spec, pp, tp)[i] blocks, the embedding items on stage 0 and the norm and
head on the last stage (`LMPipeline._partition_layers`), so each rank's parameter count is the one
topology/params.py predicts. The layout comes in whole (the rank's context, model/rank_context.py);
TP groups are taken from DeepSpeed's grid, which orders ranks as topology/layout.py does.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.pipe import PipelineModule
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from llmlaunch.topology.layout import Layout
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.stage_split import split_stages

from .layers import TransformerBlock
from .lm import LMLoss, layer_specs, leading_items, load_weights, mark_gradient_norm_owners
from .sharding import pipeline_layer_prefixes
from .tp import TensorParallelGroup


def stage_boundaries(spec: ModelSpec, pp: int, tp: int) -> list[int]:
    """Item index where each stage starts, plus the total: DeepSpeed's `parts`."""
    blocks = split_stages(spec, pp, tp)
    parts, start = [0], leading_items(spec)
    for count in blocks[:-1]:
        start += count
        parts.append(start)
    parts.append(leading_items(spec) + spec.layers + 2)
    return parts


class LMPipeline(PipelineModule):
    """PipelineModule over PipeModelDataParallelTopology(pp, tp, dp) with the stage split of
    topology/stage_split.py and TP groups taken from DeepSpeed's grid."""

    def __init__(self, spec: ModelSpec, layout: Layout, recompute: str = "none",
                 seed: int = 1234, dtype: torch.dtype = torch.float32, hf_dir=None):
        layout.check_model(spec)
        layout.check_world_size(dist.get_world_size())
        topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp,
                                                 num_dp=layout.dp)
        # layers are built inside PipelineModule.__init__, before the grid: TP coordinates come
        # from the topology and the process group is attached below
        tp_group = TensorParallelGroup(topology.get_coord(dist.get_rank()).model, layout.tp)
        self.spec = spec            # read by _partition_layers during super().__init__
        super().__init__(layers=layer_specs(spec, tp_group, recompute), topology=topology,
                         loss_fn=LMLoss(spec.vocab, tp_group), partition_method="split_stages")
        tp_group.attach(self._grid.get_slice_parallel_group())
        self.tp_group = tp_group
        self.recompute = recompute
        self._check_canonical_prefixes()
        load_weights(self, spec, tp_group, seed, hf_dir)
        self.to(dtype)
        mark_gradient_norm_owners(self, spec, tp_group)

    def _synchronize_tied_weights(self):
        """DeepSpeed broadcasts each tied weight (a Parameter that requires grad) with grad mode on;
        c10d::broadcast_ has no autograd kernel, so torch puts a node in the graph that warns "may
        lead to silently incorrect behavior" on every rank at the first backward. The broadcast is
        a copy of weights, not part of the model's computation: run it without autograd."""
        with torch.no_grad():
            super()._synchronize_tied_weights()

    def _partition_layers(self, method: str = "split_stages"):
        """Stage i gets split_stages(spec, pp, tp)[i] blocks (DeepSpeed's own methods balance item
        counts or parameters and know nothing of the planner's split)."""
        self.parts = stage_boundaries(self.spec, self.num_stages, self._topo.get_dim("model"))
        stage = self._topo.get_coord(self.global_rank).pipe
        self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

    def _check_canonical_prefixes(self):
        """The built items' canonical prefixes must follow sharding.pipeline_layer_prefixes, which
        exporting from a DeepSpeed checkpoint relies on."""
        expected = pipeline_layer_prefixes(self.spec)
        for index in range(self._local_start, self._local_stop):
            layer = self._modules.get(str(index))
            if layer is not None and layer.canonical_prefix != expected[index]:
                raise AssertionError(f"pipeline item {index} is {layer.canonical_prefix!r}, "
                                     f"expected {expected[index]!r}")

    def stage_blocks(self) -> int:
        """Transformer blocks on this rank's stage."""
        return sum(isinstance(layer, TransformerBlock) for layer in self.forward_funcs)


def build_pipeline_model(spec: ModelSpec, pp: int, tp: int, dp: int, recompute: str = "none",
                         seed: int = 1234, dtype: torch.dtype = torch.float32,
                         hf_dir=None) -> LMPipeline:
    """The model for `deepspeed.initialize(model=...)` on a job of pp*tp*dp ranks (torch.distributed
    initialised), for callers without a rank context (tests, tools): LMPipeline at that layout.
    Weights: seeded and layout-independent, or from a local HF directory of the same shape
    (`hf_dir`), sliced to this layout. dtype: torch.bfloat16 on GPU, torch.float32 on CPU."""
    return LMPipeline(spec, Layout(dp=dp, pp=pp, tp=tp), recompute=recompute, seed=seed,
                      dtype=dtype, hf_dir=hf_dir)
