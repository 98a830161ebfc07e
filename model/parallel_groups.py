"""Process groups of a layout without a pipeline, for DeepSpeed's plain engine.

DeepSpeed's PipelineModule builds its own grid; a plain nn.Module under deepspeed.initialize gets
its groups from an `mpu` object instead. `ParallelGroups` builds them from the layout's own rank
maths (topology/layout.py: TP groups are tp consecutive ranks, DP groups stride tp, as in the
pipeline) and answers DeepSpeed's questions: the data-parallel group is what ZeRO partitions over
and reduces gradients across; the model-parallel group (here the TP group) is what the global
gradient norm sums over. Every rank creates every group, in the same order (torch.distributed's rule
for new_group).
"""
from __future__ import annotations

import torch.distributed as dist

from llmlaunch.topology.layout import Layout


class ParallelGroups:
    """TP and DP groups of a pp = 1 layout, and DeepSpeed's mpu protocol over them."""

    def __init__(self, layout: Layout):
        if layout.pp != 1:
            raise ValueError(f"ParallelGroups is for layouts without a pipeline, got {layout.describe()}")
        self.layout = layout
        self.rank = dist.get_rank()
        layout.check_world_size(dist.get_world_size())
        self._groups = {}
        for axis in ("tp", "dp"):
            for ranks in layout.groups(axis):
                group = dist.new_group(ranks)   # collective: every rank creates every group
                if self.rank in ranks:
                    self._groups[axis] = (group, ranks)
        self.coords = layout.coords(self.rank)

    # DeepSpeed's mpu protocol --------------------------------------------------------------------
    def get_data_parallel_group(self):
        return self._groups["dp"][0]

    def get_data_parallel_rank(self) -> int:
        return self.coords["dp"]

    def get_data_parallel_world_size(self) -> int:
        return self.layout.dp

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self._groups["dp"][1])

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
