"""How the pipeline stages split the model: the one split that model/ builds and the planner costs.

The pipeline is the sequence of items [embedding, block_1 .. block_L, final norm + LM head]. Each
item's cost is its parameter count on one TP rank (with padded vocab): for the blocks and the LM head
compute is 2 FLOPs per parameter per token, so parameters balance memory and compute at once; the
embedding costs memory but almost no compute. A uniform split of the blocks alone overloads the
first and last stage at large vocabularies (Llama 3 405B's 128k-vocab table is 0.66 of a block),
which is why Megatron-LM (`--account-for-embedding-in-pipeline-split`) and Llama 3 (one block fewer
on the first and last stage) adjust for it.

`split_stages` returns the contiguous split that minimises the largest stage cost (the bottleneck of
both the 1F1B schedule and per-GPU memory), every stage holding at least one block; ties go to the
split that puts blocks as early as possible (deterministic).
"""
from __future__ import annotations

import functools

from .model_spec import ModelSpec
from .params import embedding_params, head_params, layer_params


def stage_costs_items(spec: ModelSpec, tp: int = 1, pp: int = 1) -> list[int]:
    """Cost of each pipeline item: [embedding, L blocks..., norm+head], per TP rank."""
    block = layer_params(spec, tp).total
    head = head_params(spec, tp, separate_stage=pp > 1)
    return [embedding_params(spec, tp)] + [block] * spec.layers + [head]


@functools.lru_cache(maxsize=4096)
def split_stages(spec: ModelSpec, pp: int, tp: int = 1) -> tuple[int, ...]:
    """Blocks on each of the pp stages (sums to L). The embedding sits on stage 0, the head on
    stage pp-1. Raises ValueError when pp > L (a stage would hold no block)."""
    if pp < 1:
        raise ValueError(f"pp must be >= 1, got {pp}")
    if pp > spec.layers:
        raise ValueError(f"pp={pp} exceeds the {spec.layers} layers: every stage needs a layer")
    if pp == 1:
        return (spec.layers,)
    return tuple(balanced_block_split(spec.layers, pp, stage_costs_items(spec, tp, pp)))


def balanced_block_split(layers: int, pp: int, item_costs: list[int]) -> list[int]:
    """Min-max contiguous split of items [first, blocks..., last] into pp stages of >= 1 block.

    Exact for these costs: for each candidate bottleneck B (binary search over the integer range)
    a greedy left-to-right fill checks feasibility; the greedy split at the smallest feasible B is
    returned. Works in O(L log(sum)) which is instant for L <= a few hundred.
    """
    first, block, last = item_costs[0], item_costs[1], item_costs[-1]

    def greedy(bound: int) -> list[int] | None:
        counts, remaining = [], layers
        for stage in range(pp):
            stages_after = pp - stage - 1
            cost = first if stage == 0 else 0
            tail = last if stage == pp - 1 else 0
            # as many blocks as fit under the bound, leaving one for each later stage
            room = (bound - cost - tail) // block if block else remaining
            take = min(room, remaining - stages_after)
            if stage == pp - 1:
                take = remaining
            if take < 1 or cost + tail + take * block > bound:
                return None
            counts.append(take)
            remaining -= take
        return counts

    low = max(block, first + block, last + block)
    high = first + last + layers * block
    while low < high:
        mid = (low + high) // 2
        if greedy(mid) is None:
            low = mid + 1
        else:
            high = mid
    return greedy(low)
