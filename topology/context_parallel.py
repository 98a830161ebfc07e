"""Context parallelism: cp ranks share every sequence, each holding s/cp of its tokens.

Symbols: s sequence length, b micro-batch, h hidden, a heads, a_kv KV heads, d head dim, q = a d,
t tensor-parallel degree, c = cp, A bytes per activation element, T = b s / c the tokens of one
micro-batch on one rank.

Both forms split the sequence into 2c chunks and give rank i chunks i and 2c - 1 - i, so that under
a causal mask every rank does the same attention work (Megatron-Core / Transformer Engine's
load balancing; Llama Team 2024, Section 3.3.2). Everything outside attention is per token: its
FLOPs, activations and memory-bound traffic divide by c (activations.py, gemms.py take s/c).
Attention needs keys and values from the whole sequence; the two forms get them differently:

- all-gather (Llama 3, Section 3.3.2): each rank all-gathers K and V (2 T a_kv d / t per rank,
  small under GQA) and attends its own queries over the whole sequence; in backward it gathers
  them again and reduce-scatters their gradients. Llama 3 leaves the gather exposed ("the exposed
  all-gather latency is small as the communicated K and V tensors are much smaller than Q ... due
  to the use of GQA"); Transformer Engine's ring (Megatron-Core's default `p2p`) sends the same
  K and V chunk by chunk beside the attention of the chunk before, so only what exceeds that
  attention shows (Engine.cp_overlap).
- all-to-all (DeepSpeed-Ulysses, Jacobs et al. 2023): an all-to-all before attention trades the
  sequence split of Q, K and V for a head split (each rank then holds the whole sequence of a/c of
  its heads), another after it trades back the output; the backward runs both on the gradients.
  It needs c to divide the KV heads of each TP rank (Layout.context_reasons), and it is blocking.

Per rank, the attention FLOPs are 1/c of the sequence's in both forms (the GEMM shapes: gemms.py).
"""
from __future__ import annotations

from .model_spec import ModelSpec


def kv_allgather_bytes(spec: ModelSpec, *, micro_batch: int, seq_len: int, tp: int, cp: int,
                       act: int) -> float:
    """The gathered K and V of one block on one rank: 2 b s a_kv d / t x A (the whole sequence; each
    rank contributes 1/c of it)."""
    return 2 * micro_batch * seq_len * spec.kv_hidden / tp * act


def ulysses_alltoall_bytes(spec: ModelSpec, *, micro_batch: int, seq_len: int, tp: int, cp: int,
                           act: int) -> tuple[float, float]:
    """The local buffers of one block's two all-to-alls on one rank: (Q, K and V before attention,
    T (q + 2 a_kv d)/t x A; the output after it, T q/t x A), T = b s / c."""
    tokens = micro_batch * seq_len / cp
    return (tokens * (spec.q_width + 2 * spec.kv_hidden) / tp * act,
            tokens * spec.q_width / tp * act)


def cp_collectives_per_block(kind: str, recompute: str) -> tuple[int, int]:
    """(forward, backward) collectives of one block per micro-batch, each of one buffer:
    all-gather form: forward the K, V gather; backward the gather again and the gradients'
    reduce-scatter (2); full recompute runs the forward's again. All-to-all form: forward the
    Q/K/V and the output exchanges (counted by the caller with their own buffers), the same two in
    backward, and the forward's again under full recompute."""
    if kind not in ("allgather", "alltoall"):
        raise ValueError(f"context-parallel kind {kind!r} is not allgather or alltoall")
    forward = 1
    backward = 2 if kind == "allgather" else 1
    return forward + (forward if recompute == "full" else 0), backward


def cp_block_time_s(spec: ModelSpec, *, kind: str, micro_batch: int, seq_len: int, tp: int,
                    cp: int, act: int, recompute: str, collective, overlap: bool = False,
                    attention_s: tuple[float, float] = (0.0, 0.0)) -> float:
    """Exposed context-parallel communication of one block and one micro-batch on one rank.
    `collective(nbytes)` prices one ring all-gather (or reduce-scatter, or all-to-all: the same
    bytes per GPU, (c - 1)/c of the local buffer) over the cp group; attention_s is the block's
    (forward, backward) attention time, what the ring hides the K/V exchange behind when `overlap`
    (Transformer Engine's ring, all-gather form only)."""
    if cp <= 1:
        return 0.0
    forward_n, backward_n = cp_collectives_per_block(kind, recompute)
    if kind == "allgather":
        one = collective(kv_allgather_bytes(spec, micro_batch=micro_batch, seq_len=seq_len, tp=tp,
                                            cp=cp, act=act))
        forward, backward = forward_n * one, backward_n * one
        if overlap:
            forward = max(0.0, forward - forward_n * attention_s[0])
            backward = max(0.0, backward - attention_s[1])
        return forward + backward
    qkv, out = ulysses_alltoall_bytes(spec, micro_batch=micro_batch, seq_len=seq_len, tp=tp, cp=cp,
                                      act=act)
    pair = collective(qkv) + collective(out)
    return (forward_n + backward_n) * pair
