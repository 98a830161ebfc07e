"""Megatron-style tensor parallelism (Shoeybi et al. 2019), written for explicit process groups.

Three layers of code, bottom up:

1. Collectives on a `TensorParallelGroup` that return their input untouched when the group has one
   rank, so a tp=1 model needs no process group at all.
2. Autograd functions that place those collectives on the forward or the backward pass:
   `copy_to_tensor_parallel_region` (forward: copy / backward: all-reduce) and
   `reduce_from_tensor_parallel_region` (forward: all-reduce / backward: copy).
3. Layers: `ColumnParallelLinear`, `RowParallelLinear`, `VocabParallelEmbedding`, and the
   vocab-parallel cross-entropy that never gathers the full logits.

Activations are batch-first throughout: `[b, s, h]`, with `h/t` (or `f/t`, `V/t`) for the slice one
of t TP ranks holds.

Sequence parallelism (Korthikanti et al. 2022, Section 4.2.2; Megatron-Core's
tensor_parallel/mappings.py and layers.py) is a property of the group holder
(`TensorParallelGroup(sequence_parallel=True)`): between the tensor-parallel regions each rank then
holds `[b, s/t, h]`, its 1/t of the sequence, so norms and the residual run on 1/t of the tokens. The
column-parallel layer all-gathers its input along the sequence (backward: reduce-scatter of the
input gradient) and saves only the rank's shard, all-gathering it again in backward for the weight
gradient; the row-parallel layer reduce-scatters its output (backward: all-gather). The embedding's
output is reduce-scattered, the head's input gathered like a column-parallel layer's. A replicated
weight that acts on the rank's shard only (norms, the row-parallel bias, gpt2's positions) gets its
gradient summed over the TP ranks inside autograd (`copy_to_tensor_parallel_region` on the weight),
so DeepSpeed sees the full gradient on every rank (Megatron-Core sums those gradients once per step
instead, in finalize_model_grads).

No module-level state: every layer gets a `TensorParallelGroup` holder when it is built. DeepSpeed's
`PipelineModule` builds layers before its grid (and hence the TP process group) exists, so the
holder starts with rank and size only (read from the topology) and `attach()` gives it the group
afterwards; every layer built with the same holder sees the group from then on.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class TensorParallelGroup:
    """The TP rank, TP size, whether the layers run sequence-parallel, and (once attached) the
    process group that one model's layers share."""

    def __init__(self, rank: int = 0, size: int = 1, group=None, sequence_parallel: bool = False):
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"tensor-parallel rank {rank} is not in a group of size {size}")
        self.rank = rank
        self.size = size
        self.group = group
        self.sequence_parallel = bool(sequence_parallel)

    @property
    def sp(self) -> bool:
        """Activations outside the tensor-parallel regions are split along the sequence (sequence
        parallelism with more than one rank; at tp = 1 it changes nothing)."""
        return self.sequence_parallel and self.size > 1

    def attach(self, group) -> None:
        """Give the holder its process group (DeepSpeed: `grid.get_slice_parallel_group()`)."""
        if self.size > 1 and dist.get_world_size(group=group) != self.size:
            raise ValueError(f"the process group has {dist.get_world_size(group=group)} ranks, "
                             f"the tensor-parallel degree is {self.size}")
        self.group = group

    def process_group(self):
        """The attached group; only called when size > 1."""
        if self.group is None:
            raise RuntimeError(f"tensor parallelism over {self.size} ranks needs a process group: "
                               "call TensorParallelGroup.attach() after the grid exists")
        return self.group

    def __repr__(self):
        sp = ", sequence_parallel=True" if self.sequence_parallel else ""
        return f"TensorParallelGroup(rank={self.rank}, size={self.size}{sp})"


def divide(numerator: int, denominator: int, what: str = "size") -> int:
    """numerator / denominator, which must be exact (a tensor dimension split over TP ranks)."""
    if numerator % denominator:
        raise ValueError(f"{what} {numerator} is not divisible by the tensor-parallel degree "
                         f"{denominator}")
    return numerator // denominator


# ---------------------------------------------------------------------------------------------
# 1. Collectives. Each returns its input when the group has a single rank.
# ---------------------------------------------------------------------------------------------

def all_reduce(tensor: torch.Tensor, tp: TensorParallelGroup,
               op=dist.ReduceOp.SUM) -> torch.Tensor:
    """A reduced copy of `tensor` over the TP group. A copy, not in place: a gradient reaching
    backward can be the very tensor another branch also receives (a residual add passes one
    gradient to both its inputs)."""
    if tp.size == 1:
        return tensor
    reduced = tensor.contiguous().clone()
    dist.all_reduce(reduced, op=op, group=tp.process_group())
    return reduced


def all_gather_last_dim(tensor: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """Concatenate the ranks' tensors along the last dim: [..., n/t] -> [..., n]."""
    if tp.size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(tp.size)]
    dist.all_gather(parts, tensor.contiguous(), group=tp.process_group())
    return torch.cat(parts, dim=-1)


def all_gather_sequence(tensor: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """Concatenate the ranks' sequence shards: [b, s/t, ...] -> [b, s, ...] (rank order)."""
    if tp.size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(tp.size)]
    dist.all_gather(parts, tensor.contiguous(), group=tp.process_group())
    return torch.cat(parts, dim=1)


def reduce_scatter_sequence(tensor: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """Sum the ranks' [b, s, ...] and keep this rank's sequence shard [b, s/t, ...]."""
    if tp.size == 1:
        return tensor
    parts = [part.contiguous() for part in tensor.chunk(tp.size, dim=1)]
    out = torch.empty_like(parts[0])
    dist.reduce_scatter(out, parts, group=tp.process_group())
    return out


def sequence_shard(tensor: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """This rank's 1/t of the sequence (dim 1), no communication."""
    if tp.size == 1:
        return tensor
    divide(tensor.shape[1], tp.size, "sequence")
    return tensor.chunk(tp.size, dim=1)[tp.rank].contiguous()


# ---------------------------------------------------------------------------------------------
# 2. Autograd functions.
# ---------------------------------------------------------------------------------------------

class _CopyToTensorParallelRegion(torch.autograd.Function):
    """forward: copy / backward: all-reduce.

    Placed where a replicated activation enters per-rank computation (the input of a
    column-parallel linear): every rank's backward produces a partial gradient for the same
    replicated input, and their sum is the full one.
    """

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad, ctx.tp), None


class _ReduceFromTensorParallelRegion(torch.autograd.Function):
    """forward: all-reduce / backward: copy.

    Placed where per-rank partial results become one replicated activation (the output of a
    row-parallel linear or of the vocab-parallel embedding): the gradient of a sum reaches every
    addend unchanged.
    """

    @staticmethod
    def forward(ctx, x, tp):
        return all_reduce(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tensor_parallel_region(x: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """Identity forward, all-reduce of the gradient backward."""
    return x if tp.size == 1 else _CopyToTensorParallelRegion.apply(x, tp)


def reduce_from_tensor_parallel_region(x: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """All-reduce forward, identity backward."""
    return x if tp.size == 1 else _ReduceFromTensorParallelRegion.apply(x, tp)


class _GatherFromSequenceParallelRegion(torch.autograd.Function):
    """forward: all-gather along the sequence / backward: reduce-scatter.

    Where the sequence-split activation enters a tensor-parallel region whose ranks each produce a
    partial gradient for the whole sequence: the reduce-scatter sums them and keeps the rank's
    shard (the conjugate of the all-gather)."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return all_gather_sequence(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter_sequence(grad, ctx.tp), None


class _ReduceScatterToSequenceParallelRegion(torch.autograd.Function):
    """forward: reduce-scatter along the sequence / backward: all-gather.

    Where per-rank partial sums (a row-parallel output, the vocab-parallel embedding) leave a
    tensor-parallel region for the sequence-split one."""

    @staticmethod
    def forward(ctx, x, tp):
        ctx.tp = tp
        return reduce_scatter_sequence(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_sequence(grad, ctx.tp), None


class _SequenceParallelLinear(torch.autograd.Function):
    """Y = all_gather(X_shard) W^T (+ b) that saves X_shard, not the gathered X.

    Korthikanti et al. 2022, Section 4.2.2: the input of a column-parallel layer under sequence
    parallelism is kept at 1/t of the sequence and all-gathered again in backward for the weight
    gradient (Megatron-Core's LinearWithGradAccumulationAndAsyncCommunication does the same); the
    input gradient, a partial sum over the ranks' columns, is reduce-scattered to the shard."""

    @staticmethod
    def forward(ctx, x_shard, weight, bias, tp):
        ctx.tp = tp
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x_shard, weight)
        return F.linear(all_gather_sequence(x_shard, tp), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x_shard, weight = ctx.saved_tensors
        x = all_gather_sequence(x_shard, ctx.tp)
        grad_input = reduce_scatter_sequence(grad.matmul(weight), ctx.tp)
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_weight = flat_grad.t().matmul(x.reshape(-1, x.shape[-1]))
        grad_bias = flat_grad.sum(dim=0) if ctx.has_bias else None
        return grad_input, grad_weight, grad_bias, None


def gather_from_sequence_parallel_region(x: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """All-gather along the sequence forward, reduce-scatter of the gradient backward."""
    return x if tp.size == 1 else _GatherFromSequenceParallelRegion.apply(x, tp)


def reduce_scatter_to_sequence_parallel_region(x: torch.Tensor,
                                               tp: TensorParallelGroup) -> torch.Tensor:
    """Reduce-scatter along the sequence forward, all-gather of the gradient backward."""
    return x if tp.size == 1 else _ReduceScatterToSequenceParallelRegion.apply(x, tp)


def sequence_parallel_linear(x_shard: torch.Tensor, weight: torch.Tensor, bias,
                             tp: TensorParallelGroup) -> torch.Tensor:
    """F.linear on the all-gathered sequence, saving only this rank's shard for backward."""
    if tp.size == 1:
        return F.linear(x_shard, weight, bias)
    return _SequenceParallelLinear.apply(x_shard, weight, bias, tp)


def replicated_weight(weight: torch.Tensor, tp: TensorParallelGroup) -> torch.Tensor:
    """A replicated parameter as the layer should use it: itself, or under sequence parallelism
    (where it acts on this rank's shard of the tokens only) through copy_to_tensor_parallel_region,
    so its gradient is the sum over the TP ranks and the replicas stay equal."""
    return copy_to_tensor_parallel_region(weight, tp) if tp.sp else weight


# ---------------------------------------------------------------------------------------------
# 3. Layers.
# ---------------------------------------------------------------------------------------------

class ColumnParallelLinear(nn.Module):
    """Y = XA + b with A split column-wise: A = [A_1 ... A_t], b = [b_1 ... b_t].

    Rank i holds A_i ([out/t, in] in nn.Linear's [out, in] storage) and computes Y_i = X A_i + b_i,
    its slice of the output columns; the output stays split ([b, s, out/t]), ready for a
    row-parallel layer or a per-rank head. The input X is replicated, so its gradient is
    all-reduced (`copy_to_tensor_parallel_region`); under sequence parallelism X arrives split
    along the sequence ([b, s/t, in]) and is all-gathered (`sequence_parallel_linear`).

    Which output rows belong to rank i is decided by model/sharding.py (a fused QKV splits q, k
    and v separately); this layer only needs the local width.
    """

    def __init__(self, in_features: int, out_features: int, tp: TensorParallelGroup,
                 bias: bool = True):
        super().__init__()
        self.tp = tp
        self.in_features = in_features
        self.out_features_per_rank = divide(out_features, tp.size, "output width")
        self.weight = nn.Parameter(torch.empty(self.out_features_per_rank, in_features))
        self.bias = nn.Parameter(torch.empty(self.out_features_per_rank)) if bias else None

    def forward(self, x):
        if self.tp.sp:                                       # x [b, s/t, in]: gathered inside
            return sequence_parallel_linear(x, self.weight, self.bias, self.tp)
        x = copy_to_tensor_parallel_region(x, self.tp)       # [b, s, in] (replicated)
        return F.linear(x, self.weight, self.bias)           # [b, s, out/t]


class RowParallelLinear(nn.Module):
    """Y = XA + b with A split row-wise, A = [A_1; ...; A_t], and X = [X_1 ... X_t] split to match.

    Rank i holds A_i ([out, in/t] in nn.Linear storage) and receives X_i ([b, s, in/t], the output
    of a column-parallel layer); Y = sum_i X_i A_i is formed by an all-reduce
    (`reduce_from_tensor_parallel_region`). The bias is replicated and added once, after the sum.
    Under sequence parallelism the sum is reduce-scattered instead: each rank gets [b, s/t, out].
    """

    def __init__(self, in_features: int, out_features: int, tp: TensorParallelGroup,
                 bias: bool = True):
        super().__init__()
        self.tp = tp
        self.in_features_per_rank = divide(in_features, tp.size, "input width")
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, self.in_features_per_rank))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x):
        partial = F.linear(x, self.weight)                           # [b, s, out] partial sum
        if self.tp.sp:
            y = reduce_scatter_to_sequence_parallel_region(partial, self.tp)   # [b, s/t, out]
        else:
            y = reduce_from_tensor_parallel_region(partial, self.tp)           # [b, s, out]
        return y + replicated_weight(self.bias, self.tp) if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Token embedding whose (padded) vocabulary rows are split across TP ranks.

    Rank i holds rows [i*V_p/t, (i+1)*V_p/t) of the padded table (V_p = padded_vocab(V, t)). Each
    rank looks up the tokens it owns, writes zeros for the others, and the all-reduce sums the
    one non-zero contribution per token (under sequence parallelism a reduce-scatter, leaving each
    rank its 1/t of the sequence). The same table serves as the tied LM head (`logits(hidden)`).
    """

    def __init__(self, padded_vocab_size: int, hidden: int, tp: TensorParallelGroup):
        super().__init__()
        self.tp = tp
        self.rows_per_rank = divide(padded_vocab_size, tp.size, "padded vocabulary")
        self.vocab_start = tp.rank * self.rows_per_rank
        self.weight = nn.Parameter(torch.empty(self.rows_per_rank, hidden))

    def forward(self, tokens):
        """tokens [b, s] -> embeddings [b, s, h] (replicated)."""
        local = tokens - self.vocab_start
        outside = (local < 0) | (local >= self.rows_per_rank)
        local = local.masked_fill(outside, 0)
        embedded = F.embedding(local, self.weight)                   # [b, s, h] partial
        embedded = embedded.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.tp.sp:
            return reduce_scatter_to_sequence_parallel_region(embedded, self.tp)   # [b, s/t, h]
        return reduce_from_tensor_parallel_region(embedded, self.tp)

    def logits(self, hidden):
        """The tied LM head: hidden [b, s, h] (replicated; [b, s/t, h] sequence-parallel) -> this
        rank's logits [b, s, V_p/t]."""
        if self.tp.sp:
            return sequence_parallel_linear(hidden, self.weight, None, self.tp)
        hidden = copy_to_tensor_parallel_region(hidden, self.tp)
        return F.linear(hidden, self.weight)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Cross-entropy over logits split along the vocabulary; only scalars per token cross ranks.

    forward: all-reduce MAX of the per-token max, SUM of the target logit (the one rank owning the
    target contributes it) and SUM of the sum of exponentials. backward: softmax minus the one-hot
    target, on the local slice only.
    """

    @staticmethod
    def forward(ctx, logits, target, tp, vocab_start, vocab_size):
        # logits [N, V_p/t], target [N]; work in fp32 whatever the model dtype
        logits = logits.float()
        local_width = logits.shape[-1]
        # the padded rows beyond the real vocabulary must not count: -inf gives them probability 0
        columns = torch.arange(vocab_start, vocab_start + local_width, device=logits.device)
        real = columns < vocab_size
        logits = logits.masked_fill(~real, float("-inf"))

        logits_max = all_reduce(logits.max(dim=-1).values, tp, op=dist.ReduceOp.MAX)   # [N]
        shifted = logits - logits_max.unsqueeze(-1)

        local_target = target - vocab_start
        outside = (local_target < 0) | (local_target >= local_width)
        local_target = local_target.masked_fill(outside, 0)
        target_logit = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1)
        target_logit = all_reduce(target_logit.masked_fill(outside, 0.0), tp)          # [N]

        exp = shifted.exp()                                                              # 0 on pads
        sum_exp = all_reduce(exp.sum(dim=-1), tp)                                        # [N]
        loss = sum_exp.log() - target_logit

        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local_target, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_target, outside = ctx.saved_tensors
        grad = softmax.clone()
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, local_target] -= (~outside).to(grad.dtype)
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                 tp: TensorParallelGroup, vocab_size: int) -> torch.Tensor:
    """Per-token loss [...] for this rank's logits [..., V_p/t] (rank i holds columns
    [i*V_p/t, (i+1)*V_p/t)) and targets [...] in [0, vocab_size). Equals F.cross_entropy on the
    gathered, unpadded logits, values and gradients; padded columns get gradient 0."""
    vocab_start = tp.rank * logits.shape[-1]
    flat = logits.reshape(-1, logits.shape[-1])
    loss = _VocabParallelCrossEntropy.apply(flat, target.reshape(-1), tp, vocab_start, vocab_size)
    return loss.view(target.shape)


def gather_logits(logits: torch.Tensor, tp: TensorParallelGroup, vocab_size: int) -> torch.Tensor:
    """Full, unpadded logits [..., V] from the ranks' slices (evaluation and tests; no autograd)."""
    with torch.no_grad():
        return all_gather_last_dim(logits, tp)[..., :vocab_size]
