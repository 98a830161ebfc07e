"""The pipeline's layers: embedding, positions (gpt2), transformer block, final norm, LM head.

Each layer is built per rank from (spec, TensorParallelGroup) and holds only its TP slice. The
activation between layers is one tensor, hidden states [b, s, h], which is what DeepSpeed's
pipeline engine sends between stages. Every layer has a `canonical_prefix`: its parameters'
canonical names (model/sharding.py) are that prefix plus their local names.

gpt2: pre-LayerNorm blocks, GELU (tanh approximation, HF's gelu_new) MLP of width f, learned
positions, biases. llama: pre-RMSNorm blocks, SwiGLU MLP, rotary positions (HF's rotate_half
convention), grouped-query attention, no biases. mistral: llama's block, with a sliding-window
mask when spec.sliding_window is set. qwen2: llama + biases on Q, K and V. qwen3: llama + an RMSNorm
over each head's d features of Q and K (before RoPE), head dim set apart from h/a. Any of the
llama family may tie its head to the token table. No dropout. Causal attention via
F.scaled_dot_product_attention (is_causal=True, or a banded boolean mask for a sliding window).

Sequence parallelism (the TensorParallelGroup's flag, model/tp.py) leaves the activation between
layers split along the sequence, [b, s/t, h]; context parallelism (a ContextParallelGroup,
model/context_parallel.py) gives each rank its two chunks of every sequence, [b, s/cp, h], with
their positions, and changes only the attention core.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmlaunch.topology.layout import RECOMPUTE_MODES
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.params import padded_vocab

from .context_parallel import ContextParallelGroup, allgather_attention, alltoall_attention
from .tp import (ColumnParallelLinear, RowParallelLinear, TensorParallelGroup,
                 VocabParallelEmbedding, copy_to_tensor_parallel_region, divide,
                 replicated_weight)


class TokenEmbedding(VocabParallelEmbedding):
    """The vocab-parallel token table [V_p/t, h]; gpt2 ties it to the LM head."""

    canonical_prefix = "embed.token."

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup):
        super().__init__(padded_vocab(spec.vocab, tp.size), spec.hidden, tp)


def tied_head_forward(embedding: TokenEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    """gpt2's LM head: the token table as output projection, hidden [b, s, h] -> [b, s, V_p/t]."""
    return embedding.logits(hidden)


def token_positions(local_len: int, tp: TensorParallelGroup | None,
                    cp: ContextParallelGroup | None, device=None) -> torch.Tensor:
    """Sequence positions of the `local_len` tokens an activation holds on this rank: its
    context-parallel chunks (cp), and of those its 1/t shard under sequence parallelism."""
    shards = tp.size if tp is not None and tp.sp else 1
    positions = (cp.positions(local_len * shards, device) if cp is not None
                 else torch.arange(local_len * shards, device=device))
    return positions.chunk(shards)[tp.rank] if shards > 1 else positions


class PositionEmbedding(nn.Module):
    """Learned absolute positions [s, h] (gpt2), replicated on every TP rank; added to the token
    embeddings at the positions the rank holds. Kept separate from the tied token table so only the
    table is tied."""

    canonical_prefix = "embed.position."

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup | None = None,
                 cp: ContextParallelGroup | None = None):
        super().__init__()
        self.tp, self.cp = tp, cp
        self.weight = nn.Parameter(torch.empty(spec.seq_len, spec.hidden))

    def forward(self, hidden):
        if (self.tp is None or not self.tp.sp) and (self.cp is None or self.cp.size == 1):
            return hidden + self.weight[: hidden.shape[1]]       # [b, s, h]
        positions = token_positions(hidden.shape[1], self.tp, self.cp, hidden.device)
        weight = self.weight if self.tp is None else replicated_weight(self.weight, self.tp)
        return hidden + weight[positions]


class Norm(nn.Module):
    """LayerNorm (weight, bias; gpt2) or RMSNorm (weight; the llama family) over `width` features
    (h; Qwen3's QK-norm: d), statistics in fp32.

    LayerNorm takes the activation dtype as it is (PyTorch's kernel accumulates in fp32) and so
    saves a 16-bit input for backward, as HF's GPT-2 and Megatron's fused kernel do; an explicit
    fp32 upcast would save an fp32 copy instead (+4 sbh bytes a block in bf16). RMSNorm is HF's
    LlamaRMSNorm op for op, for parity with HF checkpoints: it saves its fp32 upcast."""

    def __init__(self, spec: ModelSpec, width: int | None = None,
                 tp: TensorParallelGroup | None = None):
        super().__init__()
        width = spec.hidden if width is None else width
        self.eps = spec.norm_eps
        self.tp = tp   # sequence-parallel: the weights' gradients summed over TP (scale())
        self.weight = nn.Parameter(torch.empty(width))
        self.bias = nn.Parameter(torch.empty(width)) if spec.norm == "layernorm" else None

    def forward(self, x):
        weight = self.scale()
        if self.bias is not None:
            bias = self.bias if self.tp is None else replicated_weight(self.bias, self.tp)
            return F.layer_norm(x, x.shape[-1:], weight, bias, self.eps)
        # RMSNorm as HF's LlamaRMSNorm: normalise in fp32, cast back, then scale
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * normed.to(x.dtype)

    def scale(self):
        return self.weight if self.tp is None else replicated_weight(self.weight, self.tp)


class HeadNorm(Norm):
    """Qwen3's QK-norm: an RMSNorm over each head's d features, one weight for every head. Each TP
    rank applies it to its own heads only, so its gradient there is a partial sum over those heads:
    the weight enters through copy_to_tensor_parallel_region (forward: itself; backward: the
    all-reduce of the ranks' partial gradients), which keeps the replicas equal."""

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup):
        super().__init__(spec, spec.head_dim)
        self.head_tp = tp

    def scale(self):
        return copy_to_tensor_parallel_region(self.weight, self.head_tp)


class FinalNorm(Norm):
    """The norm after the last block; it sits with the LM head on the last stage."""

    canonical_prefix = "final_norm."

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup | None = None):
        super().__init__(spec, tp=tp)


class LMHead(ColumnParallelLinear):
    """The llama family's untied output projection, column-parallel over the padded vocabulary:
    hidden [b, s, h] -> this rank's logits [b, s, V_p/t]."""

    canonical_prefix = "head."

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup):
        super().__init__(spec.hidden, padded_vocab(spec.vocab, tp.size), tp, bias=False)


def rotary_cos_sin(seq_len: int, head_dim: int, theta: float, device,
                   positions: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """cos, sin [s, d] of RoPE (Su et al. 2021) in HF's layout: frequencies repeated over two
    halves, paired with rotate_half; at positions 0..s-1, or at `positions` (a context-parallel
    rank's chunks)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float)
                                / head_dim))
    positions = (torch.arange(seq_len, device=device, dtype=torch.float) if positions is None
                 else positions.to(device=device, dtype=torch.float))
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] over the last dim (HF's convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x, cos, sin):
    """x [b, heads, s, d] rotated by position."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention with this rank's a/t query heads and a_kv/t KV heads of width d.

    qkv is column-parallel (rank i's q, k and v rows are its heads; with QKV biases their slices
    too), out is row-parallel: one all-reduce in forward, one in backward (Megatron's f/g pair).
    QK-norm weights act on each head's d features, so every rank holds them whole. Under context
    parallelism (`cp`) the rank's queries are its two chunks and the core is one of
    model/context_parallel.py's two forms.
    """

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup, recompute_core: bool,
                 cp: ContextParallelGroup | None = None):
        super().__init__()
        self.cp = cp if cp is not None and cp.size > 1 else None
        self.head_dim = spec.head_dim
        self.local_heads = divide(spec.heads, tp.size, "heads")
        self.local_kv_heads = divide(spec.kv_heads, tp.size, "kv_heads")
        self.rope_theta = spec.rope_theta if spec.rotary else None
        self.window = spec.sliding_window if spec.windowed_layers else 0
        self.recompute_core = recompute_core
        self.qkv = ColumnParallelLinear(spec.hidden, spec.q_width + 2 * spec.kv_hidden, tp,
                                        bias=spec.qkv_bias)
        self.out = RowParallelLinear(spec.q_width, spec.hidden, tp, bias=spec.biases)
        if spec.qk_norm:
            self.q_norm = HeadNorm(spec, tp)
            self.k_norm = HeadNorm(spec, tp)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x):
        q_width = self.local_heads * self.head_dim
        kv_width = self.local_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_width, kv_width, kv_width], dim=-1)   # [b, s, .../t]
        b, s, _ = q.shape           # s: this rank's tokens (x is [b, s/t, h] sequence-parallel)
        q = q.view(b, s, self.local_heads, self.head_dim)
        k = k.view(b, s, self.local_kv_heads, self.head_dim)
        if self.q_norm is not None:                                           # per head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(1, 2)                                                 # [b, a/t, s, d]
        k = k.transpose(1, 2)                                                 # [b, a_kv/t, s, d]
        v = v.view(b, s, self.local_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope_theta is not None:
            positions = None if self.cp is None else self.cp.positions(s, x.device)
            cos, sin = rotary_cos_sin(s, self.head_dim, self.rope_theta, x.device, positions)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.cp is not None:
            context = self.context_parallel_core(q, k, v)
        elif self.recompute_core:
            context = checkpoint(self.core, q, k, v, use_reentrant=False)
        else:
            context = self.core(q, k, v)                                      # [b, a/t, s, d]
        context = context.transpose(1, 2).reshape(b, s, q_width)              # [b, s, h/t]
        return self.out(context)                                              # [b, s, h]

    def context_parallel_core(self, q, k, v):
        """The core over the cp group (model/context_parallel.py): q [b, a/t, s/cp, d], k and v
        [b, a_kv/t, s/cp, d] -> [b, a/t, s/cp, d]. The all-gather form always recomputes its core in
        backward (it re-gathers K and V there); the all-to-all form recomputes the local attention
        under selective recompute, the exchanges not."""
        gqa = self.local_heads != self.local_kv_heads
        if self.cp.kind == "allgather":
            return allgather_attention(q, k, v, self.cp, self.window, gqa)
        out = alltoall_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.cp,
                                 self.core, self.recompute_core)              # [b, s/cp, a/t, d]
        return out.transpose(1, 2)

    def core(self, q, k, v):
        """softmax(q k^T / sqrt(d)) v, causal; query head j reads KV head j // (a/a_kv). With a
        sliding window w, query i sees keys j with i - w < j <= i (transformers' mask)."""
        gqa = q.shape[1] != k.shape[1]
        s = q.shape[-2]
        if not self.window or self.window >= s:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(
            s, self.window, q.device), enable_gqa=gqa)


def sliding_window_mask(seq_len: int, window: int, device) -> torch.Tensor:
    """[s, s] boolean, True where query i may attend key j: i - window < j <= i."""
    i = torch.arange(seq_len, device=device).unsqueeze(1)
    j = torch.arange(seq_len, device=device).unsqueeze(0)
    return (j <= i) & (j > i - window)


class MLP(nn.Module):
    """gpt2: fc2(gelu(fc1 x)); llama: down(silu(gate x) * up x). First matrix column-parallel
    (gate and up fused), second row-parallel."""

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup, width: int | None = None):
        super().__init__()
        self.gated = spec.gated_mlp
        h, f = spec.hidden, spec.ffn_hidden if width is None else width   # an MoE's shared expert: f_s
        if self.gated:
            self.gate_up = ColumnParallelLinear(h, 2 * f, tp, bias=False)
            self.down = RowParallelLinear(f, h, tp, bias=False)
        else:
            self.fc1 = ColumnParallelLinear(h, f, tp, bias=True)
            self.fc2 = RowParallelLinear(f, h, tp, bias=True)

    def forward(self, x):
        if self.gated:
            gate, up = self.gate_up(x).chunk(2, dim=-1)           # [b, s, f/t] each
            return self.down(F.silu(gate) * up)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then + mlp(norm2(x)).

    recompute: 'none' keeps all activations; 'selective' recomputes the attention core in backward;
    'full' keeps only the block input and recomputes the whole block (torch.utils.checkpoint,
    non-reentrant, so TP collectives simply run again in the same order on every rank).
    """

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup, index: int, recompute: str,
                 cp: ContextParallelGroup | None = None):
        super().__init__()
        if recompute not in RECOMPUTE_MODES:
            raise ValueError(f"recompute {recompute!r} is not one of {', '.join(RECOMPUTE_MODES)}")
        self.canonical_prefix = f"blocks.{index}."
        self.recompute_full = recompute == "full"
        self.ln1 = Norm(spec, tp=tp)
        self.attn = Attention(spec, tp, recompute_core=recompute == "selective", cp=cp)
        self.ln2 = Norm(spec, tp=tp)
        self.mlp = self.build_mlp(spec, tp)

    def build_mlp(self, spec: ModelSpec, tp: TensorParallelGroup) -> nn.Module:
        """The block's MLP (an MoE block's experts: model/moe.py overrides it)."""
        return MLP(spec, tp)

    def forward(self, x):
        if self.recompute_full and torch.is_grad_enabled():
            return checkpoint(self._block, x, use_reentrant=False)
        return self._block(x)

    def _block(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))
