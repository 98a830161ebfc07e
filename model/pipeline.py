"""The pipeline adapter: the model's items (model/lm.py) as a DeepSpeed PipelineModule.

Stage i holds split_stages(spec, pp, tp)[i] blocks, the embedding items on stage 0 and the norm and
head on the last stage (`LMPipeline._partition_layers`), so each rank's parameter count is the one
topology/params.py predicts. The layout comes in whole (the rank's context, model/rank_context.py);
TP groups are taken from DeepSpeed's grid, which orders ranks as topology/layout.py does.

Context parallelism: DeepSpeed's grid has no context axis, so its data axis is dp x cp (the grid's
data coordinate d * cp + c is exactly topology/layout.py's rank order tp-cp-dp-pp): the pipeline
engine reduces gradients and averages the loss over the dp x cp ranks holding the same stage, as it
must (model/parallel_groups.py says why), and DeepSpeed counts dp x cp replicas of micro_batch
sequences (launcher/ds_config.py). The CP groups (Layout.groups("cp")) are made here, after the
grid's. Sequence parallelism: the activation sent between stages is the [b, s/(cp t), h] shard, so
DeepSpeed must not split it further over the TP ranks (pipeline.pipe_partitioned and
grad_partitioned off, launcher/ds_config.py): its partitioning assumes the TP ranks hold equal
copies.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.pipe import PipelineModule
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from llmlaunch.topology.layout import Layout
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.stage_split import split_stages

from .context_parallel import ContextParallelGroup
from .layers import TransformerBlock
from .expert_groups import attach_expert_groups, expert_parallel_group
from .lm import layer_specs, leading_items, load_weights, loss_function, mark_gradient_norm_owners
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
    """PipelineModule over PipeModelDataParallelTopology(pp, tp, dp x cp) with the stage split of
    topology/stage_split.py, TP groups taken from DeepSpeed's grid and CP groups of its own."""

    def __init__(self, spec: ModelSpec, layout: Layout, recompute: str = "none",
                 seed: int = 1234, dtype: torch.dtype = torch.float32, hf_dir=None):
        layout.check_model(spec)
        layout.check_world_size(dist.get_world_size())
        topology = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp,
                                                 num_dp=layout.dp * layout.cp)
        # layers are built inside PipelineModule.__init__, before the grid: TP and CP coordinates
        # come from the layout and the process groups are attached below
        coords = layout.coords(dist.get_rank())
        if topology.get_coord(dist.get_rank()).model != coords["tp"]:
            raise AssertionError("DeepSpeed's grid and topology/layout.py order ranks differently")
        tp_group = TensorParallelGroup(coords["tp"], layout.tp,
                                       sequence_parallel=layout.sequence_parallel)
        cp_group = ContextParallelGroup(coords["cp"], layout.cp, layout.cp_kind)
        ep_group = expert_parallel_group(layout, dist.get_rank())
        self.spec = spec            # read by _partition_layers during super().__init__
        super().__init__(layers=layer_specs(spec, tp_group, recompute, ep_group, cp_group),
                         topology=topology, loss_fn=loss_function(spec, tp_group),
                         partition_method="split_stages")
        tp_group.attach(self._grid.get_slice_parallel_group())
        cp_group.attach(context_parallel_group(layout))
        self.tp_group, self.cp_group, self.ep_group, self.layout = tp_group, cp_group, ep_group, layout
        self.recompute = recompute
        self._check_canonical_prefixes()
        load_weights(self, spec, tp_group, seed, hf_dir)
        self.to(dtype)
        mark_gradient_norm_owners(self, spec, tp_group)
        attach_expert_groups(self, layout, dist.get_rank(), spec, ep_group)

    def get_additional_losses(self):
        """An MoE model's router losses of the last micro-batch (DeepSpeed's pipeline engine sums
        them over the step's micro-batches, averages over the replicas and sends them to every
        stage: engine.agg_additional_losses). Every stage answers with the same names."""
        if not self.spec.moe:
            return None
        last = getattr(self.loss_fn, "last", None) or {}
        zero = torch.zeros((), device=next(self.parameters()).device)
        return {name: last.get(name, zero) for name in ("aux_loss", "z_loss")}

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


def context_parallel_group(layout: Layout):
    """This rank's CP process group (collective: every rank creates every group, in order); None at
    cp = 1."""
    if layout.cp == 1:
        return None
    mine = None
    for ranks in layout.groups("cp"):
        group = dist.new_group(ranks)
        if dist.get_rank() in ranks:
            mine = group
    return mine


def build_pipeline_model(spec: ModelSpec, pp: int, tp: int, dp: int, recompute: str = "none",
                         seed: int = 1234, dtype: torch.dtype = torch.float32,
                         hf_dir=None, ep: int = 1) -> LMPipeline:
    """The model for `deepspeed.initialize(model=...)` on a job of pp*tp*dp ranks (torch.distributed
    initialised), for callers without a rank context (tests, tools): LMPipeline at that layout
    (`ep`: an MoE model's expert-parallel degree). Weights: seeded and layout-independent, or from
    a local HF directory of the same shape (`hf_dir`), sliced to this layout. dtype:
    torch.bfloat16 on GPU, torch.float32 on CPU. (Context and sequence parallelism: LMPipeline with
    a Layout that has them.)"""
    return LMPipeline(spec, Layout(dp=dp, pp=pp, tp=tp, ep=ep), recompute=recompute, seed=seed,
                      dtype=dtype, hf_dir=hf_dir)
