"""Expert parallelism in DeepSpeed's engines: the groups, the expert parameters, the gradient norm.

DeepSpeed reduces expert gradients over the expert-data-parallel group (and the rest over the
data-parallel group), and ZeRO partitions each set over its own group, only for a model it knows
to be a Mixture of Experts: one holding a `deepspeed.moe.layer.MoE` module, whose parameters marked
`allreduce = False` with a `group_name` are the experts (deepspeed/moe/utils.py is_moe_param;
runtime/engine.py _reduce_expert_gradients; zero/stage_1_and_2.py and bf16_optimizer.py put them
in parameter groups of their own). DeepSpeed's MoE layer itself routes top-1/top-2 with capacity
and its own gate loss, not Mixtral's or Qwen-MoE's routing (model/moe.py), so llmlaunch's model
routes its tokens itself and carries `DeepSpeedExpertGroups`: a module without parameters that
makes DeepSpeed treat the model as MoE and, when the engine asks it for its groups, creates them
with DeepSpeed's own `_create_expert_data_and_model_parallel` (which orders expert ranks
tp-ep-edp-pp, as Megatron-Core's RankGenerator does), then checks them against the layout's
`groups("ep")` and `groups("edp")` (topology/layout.py, the planner's) and hands the expert group
to the model's all-to-alls. Under ZeRO-3 DeepSpeed partitions experts only for its AutoEP layers:
the layout refuses ep > 1 with ZeRO-3 (Layout.not_runnable_reason).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from deepspeed.moe.layer import MoE
from torch import nn

from llmlaunch.topology.layout import Layout

from .moe_dispatch import ExpertParallelGroup
from .sharding import canonical_named_parameters, expert_of


def group_name(ep: int) -> str:
    """DeepSpeed's name for the expert groups of degree ep (deepspeed.moe.layer.MoE's)."""
    return f"ep_size_{ep}"


def expert_parallel_group(layout: Layout, rank: int) -> ExpertParallelGroup:
    """The rank's expert-parallel holder (its group attached later, by the engine)."""
    return ExpertParallelGroup(layout.expert_coords(rank)["ep"], layout.ep)


def mark_expert_parameters(module: nn.Module, ep: int) -> None:
    """Tag the routed experts' parameters as DeepSpeed's expert parameters (ep > 1): reduced over
    their expert-data-parallel group, in optimizer groups of their own. `is_expert` is set on every
    parameter for llmlaunch's own code (the gradient norm, checkpoints)."""
    for name, param in canonical_named_parameters(module):
        param.is_expert = expert_of(name) is not None
        if param.is_expert and ep > 1:
            param.allreduce = False
            param.group_name = group_name(ep)


def check_expert_groups(layout: Layout, rank: int, ep_ranks, edp_ranks) -> None:
    """Raise ValueError unless the rank's runtime expert and expert-data groups are the layout's
    (the planner's: topology/layout.py)."""
    for axis, got in (("ep", list(ep_ranks)), ("edp", list(edp_ranks))):
        want = next(g for g in layout.groups(axis) if rank in g)
        if got != want:
            raise ValueError(f"rank {rank}: DeepSpeed's {axis} group is {got}, the layout's "
                             f"({layout.describe()}) is {want}: its expert groups were made for "
                             "another layout (one layout per process)")


class DeepSpeedExpertGroups(MoE):
    """Marks the model as Mixture-of-Experts for DeepSpeed's engine and gives the model's expert
    holders DeepSpeed's expert group (module docstring). Holds no parameters and runs nothing."""

    def __init__(self, layout: Layout, rank: int, experts: int, holder: ExpertParallelGroup):
        nn.Module.__init__(self)   # not MoE.__init__: none of DeepSpeed's gate or experts
        self.num_experts, self.ep_size = experts, layout.ep
        self.expert_group_name = group_name(layout.ep)
        self._layout, self._rank, self._holder = layout, rank, holder

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        """Called by deepspeed.initialize (engine._configure_distributed_model) on every rank."""
        from deepspeed.utils import groups

        if use_data_before_expert_parallel_:
            raise ValueError("use_data_before_expert_parallel is not llmlaunch's expert layout")
        name = self.expert_group_name
        if name not in groups._get_expert_parallel_group_dict():
            groups._create_expert_data_and_model_parallel(self.ep_size, mpu=groups.mpu)
        check_expert_groups(self._layout, self._rank, groups._get_expert_parallel_group_ranks(name),
                            groups._get_expert_data_parallel_group_ranks(name))
        self._holder.attach(groups._get_expert_parallel_group(name))

    def forward(self, *args, **kwargs):
        raise RuntimeError("DeepSpeedExpertGroups routes nothing: model/moe.py's layers do")


def attach_expert_groups(model: nn.Module, layout: Layout, rank: int, spec,
                         holder: ExpertParallelGroup) -> None:
    """Mark the experts and, with ep > 1, add the DeepSpeed hook to `model` (before
    deepspeed.initialize)."""
    mark_expert_parameters(model, layout.ep)
    if layout.ep > 1:
        model.expert_groups = DeepSpeedExpertGroups(layout, rank, spec.experts, holder)


# ---------------------------------------------------------------------------------------------
# the gradient norm of DeepSpeed's fp32 path without ZeRO
# ---------------------------------------------------------------------------------------------

def clip_grad_norm_with_experts(parameters, max_norm: float, mpu, ep_group) -> torch.Tensor:
    """Clip like runtime/utils.clip_grad_norm_, with every parameter counted once: the squared
    norms of this rank's share (TP slices, a replicated parameter on TP rank 0: `model_parallel`;
    the last stage's tied copy not) summed over the model-parallel group (pipe x TP), and the
    experts' also over the expert-parallel group, whose ranks hold different experts. DeepSpeed's
    own fp32 path averages the norm over the data-parallel group instead, which mixes ranks that
    hold different experts. Gradients are already reduced (equal on every replica)."""
    params = [p for p in parameters if p.grad is not None]
    dense, experts = torch.zeros((), dtype=torch.float32), torch.zeros((), dtype=torch.float32)
    for p in params:
        if getattr(p, "model_parallel", True) and not getattr(p, "ds_pipe_replicated", False):
            square = p.grad.detach().float().pow(2).sum().cpu()
            if getattr(p, "is_expert", False):
                experts += square
            else:
                dense += square
    device = params[0].grad.device if params else torch.device("cpu")
    squares = torch.stack([dense, experts]).to(device)
    if mpu is not None and mpu.get_model_parallel_world_size() > 1:
        dist.all_reduce(squares, group=mpu.get_model_parallel_group())
    if ep_group is not None and dist.get_world_size(group=ep_group) > 1:
        expert_part = squares[1:].clone()
        dist.all_reduce(expert_part, group=ep_group)
        squares = torch.cat([squares[:1], expert_part])
    total = squares.sum().sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad.detach().mul_(coef.to(p.grad.device))
    return total
