"""Context parallelism: cp ranks share every sequence, each holding s/cp of its tokens.

The sequence is cut into 2 cp equal chunks and rank r holds chunks r and 2cp-1-r (in that order,
[b, s/cp] tokens): under the causal mask the early chunk has the least work and the late one the
most, so every rank attends the same number of (query, key) pairs (Megatron-Core's
`get_batch_on_this_cp_rank`, Transformer Engine's load balancing; Llama Team 2024, Section 3.3.2).
Everything outside attention is per token and runs on the rank's tokens as it is; positions (RoPE,
gpt2's table) are those of the chunks (`ContextParallelGroup.positions`). Attention needs the keys
and values of the whole sequence; two forms get them (`Layout.cp_kind`):

- 'allgather' (Llama 3, Section 3.3.2): K and V are all-gathered over the cp group (one collective
  for both, [b, a_kv/t, s, d]); each of the rank's two query chunks attends to the keys up to its own
  end under a causal mask aligned to its bottom-right corner. The gather and the attention core run
  under a non-reentrant checkpoint, so only the rank's own K and V are kept for backward: backward
  gathers them again, recomputes the core, and reduce-scatters the K and V gradients (two
  collectives, topology/context_parallel.cp_collectives_per_block).
- 'alltoall' (DeepSpeed-Ulysses, Jacobs et al. 2023): `deepspeed.sequence.layer.DistributedAttention`
  trades the sequence split of Q, K and V for a head split (an all-to-all over the cp group: each
  rank then holds all s tokens of a/(t cp) query heads and a_kv/(t cp) KV heads), the local attention
  reorders the gathered chunks into sequence order and runs causal attention, and an all-to-all trades
  the output back. cp must divide the KV heads of each TP rank (Layout.context_reasons).

The group holder follows model/tp.py's: rank, size and form known when the layers are built, the
process group attached once it exists; at size 1 nothing here communicates.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CP_KINDS = ("allgather", "alltoall")


class ContextParallelGroup:
    """The CP rank, CP size, the attention form and (once attached) the process group."""

    def __init__(self, rank: int = 0, size: int = 1, kind: str = "allgather", group=None):
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"context-parallel rank {rank} is not in a group of size {size}")
        if kind not in CP_KINDS:
            raise ValueError(f"context-parallel kind {kind!r} is not one of {', '.join(CP_KINDS)}")
        self.rank, self.size, self.kind, self.group = rank, size, kind, group

    def attach(self, group) -> None:
        if self.size > 1 and dist.get_world_size(group=group) != self.size:
            raise ValueError(f"the process group has {dist.get_world_size(group=group)} ranks, "
                             f"the context-parallel degree is {self.size}")
        self.group = group

    def process_group(self):
        if self.group is None:
            raise RuntimeError(f"context parallelism over {self.size} ranks needs a process group: "
                               "call ContextParallelGroup.attach() first")
        return self.group

    def positions(self, local_len: int, device=None) -> torch.Tensor:
        """The sequence positions of this rank's `local_len` tokens (int64)."""
        return chunk_positions(local_len, self.rank, self.size, device)

    def __repr__(self):
        return f"ContextParallelGroup(rank={self.rank}, size={self.size}, kind={self.kind!r})"


# ---------------------------------------------------------------------------------------------
# the load-balanced split

def chunk_ids(rank: int, cp: int) -> tuple[int, int]:
    """The two of 2 cp chunks rank `rank` holds, in order."""
    return rank, 2 * cp - 1 - rank


def chunk_positions(local_len: int, rank: int, cp: int, device=None) -> torch.Tensor:
    """Positions of a rank's tokens: its two chunks of local_len/2 each (arange at cp = 1)."""
    if cp == 1:
        return torch.arange(local_len, device=device)
    if local_len % 2:
        raise ValueError(f"a context-parallel rank holds two equal chunks; {local_len} tokens do not "
                         "split in two")
    chunk = local_len // 2
    first, second = chunk_ids(rank, cp)
    return torch.cat([torch.arange(first * chunk, (first + 1) * chunk, device=device),
                      torch.arange(second * chunk, (second + 1) * chunk, device=device)])


def split_for_rank(x: torch.Tensor, rank: int, cp: int, dim: int = 1) -> torch.Tensor:
    """This rank's chunks of a whole sequence along `dim` (a batch's tokens or labels)."""
    if cp == 1:
        return x
    if x.shape[dim] % (2 * cp):
        raise ValueError(f"a sequence of {x.shape[dim]} does not split into 2*cp = {2 * cp} chunks")
    chunks = x.chunk(2 * cp, dim=dim)
    first, second = chunk_ids(rank, cp)
    return torch.cat([chunks[first], chunks[second]], dim=dim).contiguous()


def sequence_to_gathered_order(cp: int) -> list[int]:
    """The chunks of the rank-order concatenation of the ranks' tokens (what an all-gather or
    all-to-all over the cp group yields): [0, 2cp-1, 1, 2cp-2, ...]. As a `permute_chunks` order it
    takes a sequence-ordered tensor to that arrangement."""
    return [c for rank in range(cp) for c in chunk_ids(rank, cp)]


def gathered_to_sequence_order(cp: int) -> list[int]:
    """The `permute_chunks` order that takes the rank-order concatenation back to sequence order:
    for each chunk of the sequence, where it sits in the concatenation."""
    gathered = sequence_to_gathered_order(cp)
    return [gathered.index(chunk) for chunk in range(2 * cp)]


def permute_chunks(x: torch.Tensor, order: list[int], dim: int) -> torch.Tensor:
    """x cut into len(order) chunks along dim, reassembled as chunks[order[0]], chunks[order[1]]..."""
    chunks = x.chunk(len(order), dim=dim)
    return torch.cat([chunks[i] for i in order], dim=dim)


# ---------------------------------------------------------------------------------------------
# collectives and their autograd conjugates

def _all_gather(x: torch.Tensor, cp: ContextParallelGroup, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(cp.size)]
    dist.all_gather(parts, x.contiguous(), group=cp.process_group())
    return torch.cat(parts, dim=dim)


def _reduce_scatter(x: torch.Tensor, cp: ContextParallelGroup, dim: int) -> torch.Tensor:
    parts = [part.contiguous() for part in x.chunk(cp.size, dim=dim)]
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=cp.process_group())
    return out


class _AllGatherContext(torch.autograd.Function):
    """forward: all-gather of the ranks' tokens along `dim` (rank order) / backward: reduce-scatter
    (every rank's queries contributed to the gradient of every rank's keys and values)."""

    @staticmethod
    def forward(ctx, x, cp, dim):
        ctx.cp, ctx.dim = cp, dim
        return _all_gather(x, cp, dim)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.cp, ctx.dim), None, None


def all_gather_context(x: torch.Tensor, cp: ContextParallelGroup, dim: int) -> torch.Tensor:
    return x if cp.size == 1 else _AllGatherContext.apply(x, cp, dim)


# ---------------------------------------------------------------------------------------------
# masks

def lower_right_mask(q_len: int, kv_len: int, window: int, dtype, device) -> torch.Tensor:
    """The additive causal mask of queries at positions kv_len - q_len .. kv_len - 1 over keys
    0 .. kv_len - 1 (a causal mask aligned to the bottom-right corner; with a sliding window w, query
    i sees keys j with i - w < j <= i), for queries in REVERSED order.

    mask[i', j] depends on i' + j only (i' = q_len - 1 - i), so it is a Hankel matrix: a strided view
    (strides (1, 1)) of one vector of q_len + kv_len - 1 values. PyTorch's CPU flash-attention kernel
    reads it as it is, so the mask costs O(s), not the O(s^2 / cp) of a materialised one (which
    scaled_dot_product_attention would also save for backward)."""
    last = kv_len - 1
    m = torch.arange(q_len + kv_len - 1, device=device)
    allowed = m <= last
    if window:
        allowed &= m > last - window
    values = torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
    return values.as_strided((q_len, kv_len), (1, 1))


def attend_lower_right(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                       gqa: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for queries that are the LAST q_len positions of the keys'
    sequence (causal, optional sliding window): q [b, a, L, d], k and v [b, a_kv, S, d], L <= S."""
    q_len, kv_len = q.shape[-2], k.shape[-2]
    if q_len == kv_len and not window:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if q.is_cuda and not window:
        from torch.nn.attention.bias import causal_lower_right

        if gqa:   # the flash path of CausalBias takes equal head counts
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q_len, kv_len))
    mask = lower_right_mask(q_len, kv_len, window, q.dtype, q.device)
    out = F.scaled_dot_product_attention(q.flip(-2), k, v, attn_mask=mask, enable_gqa=gqa)
    return out.flip(-2)


# ---------------------------------------------------------------------------------------------
# the two forms

def allgather_attention(q, k, v, cp: ContextParallelGroup, window: int, gqa: bool):
    """Attention of this rank's queries (its two chunks, [b, a/t, s/cp, d]) over the whole
    sequence's keys and values, gathered over the cp group; see the module docstring. Returns
    [b, a/t, s/cp, d]. The gather and the core run under a checkpoint: backward re-gathers."""
    return checkpoint(_allgather_core, q, k, v, cp, window, gqa, use_reentrant=False)


def _allgather_core(q, k, v, cp: ContextParallelGroup, window: int, gqa: bool):
    kv_heads = k.shape[1]
    kv = all_gather_context(torch.cat([k, v], dim=1), cp, dim=2)     # one collective for K and V
    kv = permute_chunks(kv, gathered_to_sequence_order(cp.size), dim=2)   # sequence order
    k_all, v_all = kv[:, :kv_heads], kv[:, kv_heads:]
    chunk = q.shape[2] // 2
    outs = []
    for index, chunk_id in enumerate(chunk_ids(cp.rank, cp.size)):
        end = (chunk_id + 1) * chunk
        q_chunk = q[:, :, index * chunk:(index + 1) * chunk]
        outs.append(attend_lower_right(q_chunk, k_all[:, :, :end], v_all[:, :, :end], window, gqa))
    return torch.cat(outs, dim=2)


class UlyssesLocalAttention:
    """The local attention DeepSpeed's DistributedAttention calls after its all-to-all: q, k, v
    [b, s, heads/cp, d] hold the ranks' chunks in rank order; reordered into the sequence's order,
    causal attention (optionally a sliding window), and the output back in rank order
    [b, s, heads/cp, d]."""

    def __init__(self, cp_size: int, core, recompute_core: bool):
        self.cp_size, self.core, self.recompute_core = cp_size, core, recompute_core

    def __call__(self, q, k, v):
        to_sequence = gathered_to_sequence_order(self.cp_size)
        q, k, v = (permute_chunks(t, to_sequence, dim=1).transpose(1, 2) for t in (q, k, v))
        if self.recompute_core:
            out = checkpoint(self.core, q, k, v, use_reentrant=False)
        else:
            out = self.core(q, k, v)                                     # [b, heads/cp, s, d]
        out = out.transpose(1, 2)
        return permute_chunks(out, sequence_to_gathered_order(self.cp_size), dim=1).contiguous()


def alltoall_attention(q, k, v, cp: ContextParallelGroup, core, recompute_core: bool):
    """DeepSpeed-Ulysses over the cp group: q [b, s/cp, a/t, d], k and v [b, s/cp, a_kv/t, d] ->
    [b, s/cp, a/t, d]; `core(q, k, v)` is the causal attention of [b, heads, s, d] tensors.
    (DistributedAttention holds no state but the group and the local attention: built per call.)"""
    from deepspeed.sequence.layer import DistributedAttention

    exchange = DistributedAttention(UlyssesLocalAttention(cp.size, core, recompute_core),
                                    cp.process_group(), scatter_idx=2, gather_idx=1)
    return exchange(q, k, v, 0)
