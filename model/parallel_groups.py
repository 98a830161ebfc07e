"""Process groups of a layout without a pipeline, for DeepSpeed's plain engine.

DeepSpeed's PipelineModule builds its own grid; a plain nn.Module under deepspeed.initialize gets
its groups from an `mpu` object instead. `ParallelGroups` builds them from the layout's own rank
maths (topology/layout.py: TP groups are tp consecutive ranks, CP groups stride tp, DP groups stride
tp x cp, as in the pipeline) and answers DeepSpeed's questions: the data-parallel group is what ZeRO
partitions over and reduces gradients across; the model-parallel group (here the TP group) is what
the global gradient norm sums over. Every rank creates every group, in the same order
(torch.distributed's rule for new_group).

Context parallelism: the ranks of a CP group hold the same weights and see different tokens of the
same samples, so for DeepSpeed they are data-parallel replicas: its data-parallel group is dp x cp
(the `replica` groups: Megatron-Core's data-parallel group "with context parallel"), gradients are
averaged over it and ZeRO partitions over it, while the data loader shards samples by the dp
coordinate only (`data_parallel_rank`). DeepSpeed's own sequence-parallel protocol
(get_sequence_parallel_world_size) is not used: it divides the summed gradients by dp, not dp x cp,
which would need each rank's loss scaled by 1/cp.
"""
from __future__ import annotations

import torch.distributed as dist

from llmlaunch.topology.layout import Layout


def replica_axes(layout: Layout) -> list[tuple[str, tuple[str, ...]]]:
    """The groups ParallelGroups creates, in creation order: (name, axes of Layout.groups)."""
    named = [("tp", ("tp",)), ("dp", ("dp",)), ("cp", ("cp",))]
    return named + [("replica", ("cp", "dp"))] if layout.cp > 1 else named


class ParallelGroups:
    """TP and DP groups of a pp = 1 layout, and DeepSpeed's mpu protocol over them."""

    def __init__(self, layout: Layout):
        if layout.pp != 1:
            raise ValueError(f"ParallelGroups is for layouts without a pipeline, got {layout.describe()}")
        self.layout = layout
        self.rank = dist.get_rank()
        layout.check_world_size(dist.get_world_size())
        self._groups = {}
        for name, axes in replica_axes(layout):
            for ranks in layout.groups(*axes):
                group = dist.new_group(ranks)   # collective: every rank creates every group
                if self.rank in ranks:
                    self._groups[name] = (group, ranks)
        if "replica" not in self._groups:       # cp = 1: the replicas are the dp group
            self._groups["replica"] = self._groups["dp"]
        self.coords = layout.coords(self.rank)

    # ours ----------------------------------------------------------------------------------------
    @property
    def data_parallel_rank(self) -> int:
        """Which 1/dp of every global batch this rank reads (its dp coordinate)."""
        return self.coords["dp"]

    def get_data_only_parallel_group(self):
        """The dp group proper (ranks reading different samples, same cp coordinate)."""
        return self._groups["dp"][0]

    def get_context_parallel_group(self):
        return self._groups["cp"][0]

    def get_context_parallel_rank(self) -> int:
        return self.coords["cp"]

    # DeepSpeed's mpu protocol --------------------------------------------------------------------
    def get_data_parallel_group(self):
        """dp x cp: every rank holding the same weights (module docstring)."""
        return self._groups["replica"][0]

    def get_data_parallel_rank(self) -> int:
        return self.coords["dp"] * self.layout.cp + self.coords["cp"]

    def get_data_parallel_world_size(self) -> int:
        return self.layout.dp * self.layout.cp

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self._groups["replica"][1])

    def get_model_parallel_group(self):
        return self._groups["tp"][0]

    def get_model_parallel_rank(self) -> int:
        return self.coords["tp"]

    def get_model_parallel_world_size(self) -> int:
        return self.layout.tp

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self._groups["tp"][1][0]

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0
