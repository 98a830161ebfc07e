"""Expert parallelism of a Mixture-of-Experts model: what a GPU holds of the experts, the group their
states are sharded over, and the all-to-all of token routing.

Symbols: E routed experts per MoE layer, k experts per token, f_e one expert's MLP width, h hidden,
t tensor-parallel, d data-parallel, e expert-parallel degree (e divides d and E), T tokens of one
micro-batch on one GPU (b s), c capacity factor, A bytes per activation element.

Expert parallelism (Rajbhandari et al. 2022, DeepSpeed-MoE, arXiv 2201.05596, Section 5.1 "expert
parallelism and expert-slicing"; Megatron-LM core's MoE, `--expert-model-parallel-size`): the e
consecutive ranks of a data-parallel group split every MoE layer's E experts, E/e whole experts
each (each still split over t like a dense MLP); everything else (attention, norms, the router,
a shared expert) stays replicated over the d ranks. So a GPU holds E/e of the routed experts'
parameters, and the ranks that hold the same experts form an expert-data-parallel group of d/e:
expert gradients are reduced, and ZeRO shards expert optimizer states (and gradients, weights)
over d/e ranks, the other parameters over d (DeepSpeed-MoE's "expert data parallel group";
Megatron-LM's expert-data-parallel group, size d/e at expert tp = t). Under ZeRO-1 the expert
optimizer states per GPU are then (P_exp/e)/(d/e) = P_exp/d: unchanged by e; e shrinks the expert
weights and (below ZeRO-2) gradients e-fold.

Token routing: each MoE layer sends every token's k copies to the ranks holding its experts
(dispatch) and brings the outputs back (combine): two all-to-alls forward, two more backward
(their gradients), and the forward's two again under full recompute. The buffer a GPU exchanges
per all-to-all is T k h A c (c, the capacity factor: GShard's and DeepSpeed-MoE's expert buffers
are padded to c times the balanced load; Lepikhin et al. 2020, Section 2.2), of which (e-1)/e
leaves the GPU (the 1/e routed to its own experts stays). With c > 1 the expert GEMMs run on the
padded buffers too (topology/gemms.py). Load is assumed uniform over the experts and no token is
dropped.
"""
from __future__ import annotations

import functools

from .model_spec import ModelSpec
from .params import layer_params, mlp_params

DEFAULT_CAPACITY_FACTOR = 1.0
"""c = 1: buffers exactly the balanced load (Megatron-LM core's dropless default; DeepSpeed-MoE's
training default capacity_factor is 1.0 too)."""
ALLTOALLS_FORWARD = 2
"""Dispatch and combine, per MoE layer and micro-batch."""


@functools.lru_cache(maxsize=4096)
def routed_expert_params(spec: ModelSpec, tp: int = 1) -> float:
    """Parameters of one MoE layer's E routed experts on one of `tp` ranks: E (sharded / t +
    replicated) of one expert's MLP of width f_e (params.mlp_params). 0 for a dense model."""
    if not spec.moe:
        return 0.0
    sharded, replicated = mlp_params(spec, spec.expert_ffn_hidden)
    return spec.experts * (sharded / tp + replicated)


@functools.lru_cache(maxsize=4096)
def expert_params_held(spec: ModelSpec, blocks: int, tp: int, ep: int) -> float:
    """Routed-expert parameters one GPU holds for `blocks` MoE blocks: E/e experts of each,
    blocks x routed_expert_params / e (DeepSpeed-MoE Section 5.1)."""
    return blocks * routed_expert_params(spec, tp) / ep


def block_params_held(spec: ModelSpec, tp: int, ep: int) -> float:
    """One block as one GPU holds it, its routed experts E/ep of them (an MoE block: the larger
    kind, params.layer_params): what ZeRO-3 and FSDP gather at once."""
    return layer_params(spec, tp).total - expert_params_held(spec, 1, tp, 1) + expert_params_held(spec, 1, tp, ep)


def expert_data_parallel(dp: int, ep: int) -> int:
    """The expert-data-parallel degree d/e: the ranks holding the same experts, over which expert
    gradients are reduced and ZeRO shards their states (DeepSpeed-MoE; Megatron-LM core)."""
    if ep < 1 or dp % ep:
        raise ValueError(f"ep={ep} must be a positive divisor of dp={dp}")
    return dp // ep


def alltoall_buffer_bytes(spec: ModelSpec, tokens: float, act_bytes: int,
                          capacity_factor: float = DEFAULT_CAPACITY_FACTOR) -> float:
    """Bytes one GPU exchanges in one all-to-all of an MoE layer: T k h A c (the k routed copies of
    its T tokens, padded to the capacity factor c)."""
    if capacity_factor < 1:
        raise ValueError(f"capacity factor must be at least 1.0 (the balanced load), got "
                         f"{capacity_factor:g}")
    return tokens * spec.experts_per_token * spec.hidden * act_bytes * capacity_factor


def dispatch_buffer_bytes(spec: ModelSpec, moe_blocks: int, ep: int, micro_batch: int,
                          seq_len: int | None, cp: int, act_bytes: int) -> float:
    """The all-to-all buffer of one MoE layer at a time (experts.alltoall_buffer_bytes at the
    micro-batch's tokens on this rank, balanced routing): the k routed copies of every token,
    gathered for the exchange over the ep group and gone once the layer's combine returned, so
    counted once per stage, not per layer. None without routed experts here or at ep = 1 (no
    exchange). `validate` measures it (launcher/validate.py, the dispatch_buffer row)."""
    if not spec.moe or moe_blocks == 0 or ep == 1:
        return 0.0
    tokens = micro_batch * (seq_len or spec.seq_len) / cp
    return alltoall_buffer_bytes(spec, tokens, act_bytes)


def alltoall_bytes_sent(spec: ModelSpec, tokens: float, act_bytes: int, ep: int,
                        capacity_factor: float = DEFAULT_CAPACITY_FACTOR) -> float:
    """Of alltoall_buffer_bytes, what leaves the GPU: (e-1)/e of it (1/e is routed to the experts it
    holds itself)."""
    return alltoall_buffer_bytes(spec, tokens, act_bytes, capacity_factor) * (ep - 1) / ep


def alltoalls_per_moe_layer(recompute: str) -> int:
    """All-to-alls of one MoE layer per micro-batch: dispatch and combine forward, their gradients
    backward (4), and the forward's two again under full recompute (6)."""
    return 2 * ALLTOALLS_FORWARD + (ALLTOALLS_FORWARD if recompute == "full" else 0)


# DeepEP's normal (training) kernels, V1 (deepseek-ai/DeepEP docs/legacy.md, "Normal kernels with
# NVLink and RDMA forwarding": H800 with one CX7 400 Gb/s NIC a GPU, the DGX H100's NIC, at the
# DeepSeek-V3 setting of 4096 tokens, h 7168, top-4 groups, top-8 experts): the bottleneck RDMA
# bandwidth of a dispatch / combine over EP 64 (8 nodes), 51 / 50 GB/s. It is a logical bandwidth:
# tests/test_internode.py counts each token once per node it goes to, its own node included
# (rdma_idx = topk_idx // experts per node, made unique per token), over the kernel's time.
DEEPEP_DISPATCH_GB_PER_S = 51.0
DEEPEP_COMBINE_GB_PER_S = 50.0


def dispatch_tokens_per_gpu(micro_batch: int, seq_len: int, cp: int, tp: int,
                            sequence_parallel: bool) -> float:
    """Tokens one GPU routes through an MoE layer per micro-batch: b s / cp, and b s / (cp t) under
    sequence parallelism, where the MoE layer receives the hidden states split over the t tensor
    ranks (Megatron-Core requires SP with TP > 1 in an MoE model: transformer_config.py, 'sequence
    parallelism must be used' with expert and tensor parallelism; its dispatchers exchange each
    rank's own T/t tokens, with expert tensor parallelism 1 over the tp x ep ranks)."""
    tokens = micro_batch * seq_len / cp
    return tokens / tp if sequence_parallel and tp > 1 else tokens


def nodes_per_token(spec: ModelSpec) -> int:
    """Nodes a token's k routed copies reach at most: the node-limited groups M
    (expert_groups_per_token; DeepSeek-V3 Section 2.1.2, M = 4, each group one node's experts) or,
    not limited, k (one node per expert at worst)."""
    return spec.expert_groups_per_token or spec.experts_per_token


def deepep_internode_time_s(spec: ModelSpec, tokens: float, act_bytes: int,
                            gb_per_s: float) -> float:
    """One DeepEP dispatch or combine across nodes: each token leaves once per node it is routed
    to (DeepEP forwards it over NVLink to that node's GPUs), T M h A bytes at the measured logical
    bandwidth (DEEPEP_DISPATCH_GB_PER_S / DEEPEP_COMBINE_GB_PER_S, which count the own node the
    same way)."""
    return tokens * nodes_per_token(spec) * spec.hidden * act_bytes / (gb_per_s * 1e9)
