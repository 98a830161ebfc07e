"""Token routing of a Mixture-of-Experts layer over an expert-parallel group: which rank each token
copy goes to, the all-to-alls that take it there and back, and the permutations around them.

Three tiers, as model/tp.py:
1. `ExpertParallelGroup` (rank, size, the process group once attached) and the all-to-all
   collective, which returns its input when the group has one rank;
2. `all_to_all` as an autograd function: forward sends rows by split sizes, backward sends their
   gradients back by the swapped sizes;
3. `Routing`: one micro-batch's plan (who sends what where, how the received rows regroup by
   local expert) with `dispatch` and `combine` built on 1 and 2.

Expert parallelism (DeepSpeed-MoE, Rajbhandari et al. 2022, Section 5.1; GShard, Lepikhin et al.
2020): the ep ranks of a group hold E/ep experts each, rank r experts [r E/ep, (r+1) E/ep). Each
rank routes its own tokens: the k copies of its T tokens are sorted by expert (slot-major within an
expert: every token's first choice before any second choice, GShard's priority), sent to the ranks
holding those experts, run there, and sent back. Dropless (capacity 0): every copy is sent, the
split sizes exchanged first (one small all-to-all of the per-expert counts). With a capacity C,
each expert takes at most C copies from each source rank, in that priority order; its buffer is
padded to C rows (the all-to-all and the expert GEMMs then have fixed sizes, as the planner prices
them) and the copies beyond it are dropped (they contribute nothing; the residual carries them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist


class ExpertParallelGroup:
    """This rank's place in its expert-parallel group (ep rank, ep size) and, once attached, the
    process group of the all-to-alls (model/expert_groups.py attaches DeepSpeed's, checked against
    the layout's)."""

    def __init__(self, rank: int = 0, size: int = 1, group=None):
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"expert-parallel rank {rank} is not in a group of size {size}")
        self.rank, self.size, self.group = rank, size, group

    def attach(self, group) -> None:
        if self.size > 1:
            if dist.get_world_size(group=group) != self.size:
                raise ValueError(f"the process group has {dist.get_world_size(group=group)} ranks, "
                                 f"the expert-parallel degree is {self.size}")
            if dist.get_rank(group=group) != self.rank:
                raise ValueError(f"this rank is rank {dist.get_rank(group=group)} of its expert "
                                 f"group, the layout says {self.rank}")
        self.group = group

    def process_group(self):
        if self.group is None:
            raise RuntimeError(f"expert parallelism over {self.size} ranks needs a process group: "
                               "the engine attaches it (model/expert_groups.py)")
        return self.group

    def local_experts(self, experts: int) -> range:
        """The global ids of the experts this rank holds."""
        per_rank = experts // self.size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def __repr__(self):
        return f"ExpertParallelGroup(rank={self.rank}, size={self.size})"


# ---------------------------------------------------------------------------------------------
# 1. The collective.
# ---------------------------------------------------------------------------------------------

def exchange(rows: torch.Tensor, send: list[int], recv: list[int],
             ep: ExpertParallelGroup) -> torch.Tensor:
    """All-to-all of `rows` [sum(send), ...]: send[r] rows to rank r, recv[r] rows from it; the
    received rows in source order [sum(recv), ...]."""
    if ep.size == 1:
        return rows
    out = rows.new_empty((sum(recv), *rows.shape[1:]))
    dist.all_to_all_single(out, rows.contiguous(), recv, send, group=ep.process_group())
    return out


# ---------------------------------------------------------------------------------------------
# 2. Autograd.
# ---------------------------------------------------------------------------------------------

class _AllToAll(torch.autograd.Function):
    """forward: rows to their ranks / backward: the gradients of the received rows back to the
    ranks they came from (the same exchange with the split sizes swapped)."""

    @staticmethod
    def forward(ctx, rows, send, recv, ep):
        ctx.send, ctx.recv, ctx.ep = send, recv, ep
        return exchange(rows, send, recv, ep)

    @staticmethod
    def backward(ctx, grad):
        return exchange(grad, ctx.recv, ctx.send, ctx.ep), None, None, None


def all_to_all(rows: torch.Tensor, send: list[int], recv: list[int],
               ep: ExpertParallelGroup) -> torch.Tensor:
    return rows if ep.size == 1 else _AllToAll.apply(rows, send, recv, ep)


# ---------------------------------------------------------------------------------------------
# 3. One micro-batch's routing.
# ---------------------------------------------------------------------------------------------

def expert_capacity(tokens: int, experts_per_token: int, experts: int,
                    capacity_factor: float) -> int:
    """Rows of one expert's buffer per source rank: ceil(C T k / E) (GShard's expert capacity, here
    per rank and micro-batch, as the planner's alltoall_buffer_bytes prices it)."""
    return math.ceil(capacity_factor * tokens * experts_per_token / experts)


@dataclass
class Routing:
    """Where one micro-batch's token copies go. Copy c = j T + t is token t's j-th choice."""

    copies: int
    """T k."""
    source_copy: torch.Tensor
    """[sent rows]: the copy each sent row carries, -1 for padding; rows sorted by expert."""
    send: list[int]
    """Rows sent to each ep rank."""
    recv: list[int]
    """Rows received from each ep rank."""
    regroup: torch.Tensor
    """[received rows]: the received rows (source-major) reordered local-expert-major."""
    expert_rows: list[int]
    """Rows each local expert runs on, in regroup order."""
    selected: torch.Tensor
    """[E] copies routed to each expert (before any drop)."""
    dropped: int
    """Copies beyond an expert's capacity (0 dropless)."""


def plan_routing(top_experts: torch.Tensor, experts: int, ep: ExpertParallelGroup,
                 capacity_factor: float = 0.0) -> Routing:
    """The routing of top_experts [T, k] (expert ids): sorted, counted, split sizes exchanged
    (dropless) or fixed at the capacity, and the regrouping of what arrives. Collective over the
    ep group when dropless and ep > 1."""
    tokens, k = top_experts.shape
    flat = top_experts.t().reshape(-1)                                    # copy j T + t
    order = torch.argsort(flat, stable=True)                              # by expert, then copy
    selected = torch.bincount(flat, minlength=experts)
    local = experts // ep.size
    if capacity_factor:
        capacity = expert_capacity(tokens, k, experts, capacity_factor)
        starts = torch.cumsum(selected, 0) - selected
        position = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
        kept = position < capacity
        slot = flat[order] * capacity + position
        source_copy = torch.full((experts * capacity,), -1, dtype=torch.long, device=flat.device)
        source_copy[slot[kept]] = order[kept]
        per_expert = torch.full((experts,), capacity, dtype=torch.long)
        received = per_expert.view(ep.size, local)                        # the same from everyone
        dropped = int((~kept).sum())
    else:
        source_copy = order
        per_expert = selected.cpu()
        received = exchange(per_expert, [local] * ep.size, [local] * ep.size, ep).view(ep.size, local)
        dropped = 0
    send = per_expert.view(ep.size, local).sum(1).tolist()
    recv = received.sum(1).tolist()
    return Routing(copies=tokens * k, source_copy=source_copy, send=send, recv=recv,
                   regroup=regroup_index(received).to(flat.device),
                   expert_rows=received.sum(0).tolist(), selected=selected,
                   dropped=dropped)


def regroup_index(received: torch.Tensor) -> torch.Tensor:
    """Indices that reorder rows received source-major (source s, then its local experts e, rows
    received[s, e] each) into local-expert-major order (expert e, then source s)."""
    sizes = received.reshape(-1)
    starts = (torch.cumsum(sizes, 0) - sizes).view_as(received)
    sizes_es, starts_es = received.t().reshape(-1), starts.t().reshape(-1)
    total = int(sizes.sum())
    shift = torch.repeat_interleave(starts_es - (torch.cumsum(sizes_es, 0) - sizes_es), sizes_es)
    return torch.arange(total) + shift


def dispatch(x: torch.Tensor, routing: Routing, k: int, ep: ExpertParallelGroup) -> torch.Tensor:
    """x [T, h] -> the rows this rank's experts run on [sum(expert_rows), h], local-expert-major
    (padding rows zero)."""
    tokens = x.shape[0]
    padded = torch.cat([x, x.new_zeros(1, x.shape[1])])                  # row T: padding
    token = torch.where(routing.source_copy >= 0, routing.source_copy % tokens, tokens)
    received = all_to_all(padded.index_select(0, token), routing.send, routing.recv, ep)
    return received.index_select(0, routing.regroup)


def combine(rows: torch.Tensor, routing: Routing, weights: torch.Tensor,
            ep: ExpertParallelGroup) -> torch.Tensor:
    """The experts' outputs [sum(expert_rows), h] (local-expert-major) back to the tokens: sent
    home, placed at their copies (dropped copies 0), weighted [T, k] and summed over the k choices:
    [T, h]."""
    tokens, k = weights.shape
    back = all_to_all(_unpermute(rows, routing.regroup), routing.recv, routing.send, ep)
    valid = routing.source_copy >= 0
    per_copy = back.new_zeros(routing.copies, back.shape[1]).index_add(
        0, routing.source_copy[valid], back[valid])
    # weighted in fp32 (the router's weights are; transformers' Mixtral multiplies the same way)
    weighted = per_copy.view(k, tokens, -1).float() * weights.t().unsqueeze(-1).float()
    return weighted.sum(0).to(rows.dtype)


def _unpermute(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows placed at `index` (the inverse of index_select with it), differentiably."""
    return rows.index_select(0, torch.argsort(index))
