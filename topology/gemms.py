"""Every matrix multiply of a training step, with its shape after the tensor-parallel split.

A GEMM C[m, n] = A[m, k] B[k, n] (`batch` independent ones at once) costs 2 m n k FLOPs per product.
Per transformer block and TP rank, at micro-batch b, sequence s, T = b s tokens (Megatron-LM's
column-parallel QKV and MLP-in, row-parallel out-projection and MLP-out; Shoeybi et al. 2019):

  qkv               m = T,  n = (a d + 2 a_kv d) / t,  k = h
  attention scores  m = s,  n = s_k,  k = d,    batch = b a / t     (Q K^T per query head)
  attention values  m = s,  n = d,    k = s_k,  batch = b a / t     (P V)
  out-proj          m = T,  n = h,    k = a d / t
  mlp up (and gate) m = T,  n = f / t, k = h                         (gate only with SwiGLU)
  mlp down          m = T,  n = h,    k = f / t
  head              m = T,  n = V_p / t, k = h                       (last stage; V_p padded vocab)

An MoE block (Mixture-of-Experts, every block of an MoE model planned as one) replaces the MLP by
  router            m = T,  n = E,    k = h                          (replicated over TP)
  mlp up/gate/down  as above at f_e, batch = E/e local experts of m = c T k e / E rows each
                    (k routed copies of the T tokens, spread evenly over the E experts, e-way
                    expert parallel, padded to the capacity factor c: topology/experts.py)
  shared-up/gate/down  as the dense MLP at f_s (Qwen2-MoE, DeepSeek), and its gate m = T, n = 1
so that at c = 1 its FLOPs are flops.moe_matmul_flops_per_token's.

where s_k, the keys each query attends to, is read off flops.attention_core_flops_per_token (4 a d s_k
FLOPs a token), so a change to how the attention core is counted (a sliding window) flows through.
Backward has two GEMMs per forward one: the gradient of the first operand dA = dC B^T (m, k, n),
"backward-data", and of the second dB = A^T dC (k, n, m), "backward-weight" (for the attention
core both operands are activations; the names keep the shapes). Recomputation repeats forward
GEMMs: all of a block's under full recompute, the attention core's under selective
(Korthikanti et al. 2022).

With gpt2, full recompute and V_p = V the FLOPs of this list sum to Narayanan et al. 2021 eq. (3)
(tests/unit/test_gemms.py); with V_p > V they exceed it by the padding's head FLOPs.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass

from .flops import attention_core_flops_per_token
from .frozen_hash import cached_hash
from .model_spec import ModelSpec
from .params import dense_variant, mla_projections, padded_vocab

PHASES = ("forward", "backward-data", "backward-weight")
ATTENTION_CORE = ("attention-scores", "attention-values")
OP_SELECTIVE = "selective-op"
"""How the step prices recompute 'selective' under torchtitan's per-op policy (Engine.activations
'torchtitan'): op_recomputed_gemms, and every forward memory-bound kernel again (kernels.py)."""


@dataclass(frozen=True)
class Gemm:
    """One GEMM (or `batch` equal ones in one kernel) of one phase."""

    name: str
    m: float
    n: float
    k: float
    batch: int = 1
    phase: str = "forward"
    executed: float = 1.0
    """Fraction of the m n k products the kernel computes: a fused causal attention kernel skips
    the masked upper triangle of the score matrix (1/2 at long sequences); 1 otherwise."""
    on_chip: float = 0.0
    """Elements per product of an operand that never reaches HBM: a fused attention kernel keeps
    the s x s_k score (or probability) matrix and its gradient in on-chip memory."""

    @property
    def flops(self) -> float:
        """2 m n k per product: the FLOPs the model counts."""
        return 2.0 * self.m * self.n * self.k * self.batch

    @property
    def executed_flops(self) -> float:
        return self.flops * self.executed

    def __hash__(self) -> int:
        return cached_hash(self)

    def operand_elements(self) -> float:
        """Elements read and written once each: A (m k), B (k n), C (m n), per product, less what a
    fused kernel keeps on chip."""
        return (self.m * self.k + self.k * self.n + self.m * self.n - self.on_chip) * self.batch

    @property
    def shape(self) -> str:
        """'MxNxK', or 'MxNxKxB' for a batch: the key a measured rate is stored under."""
        dims = "x".join(str(int(round(v))) for v in (self.m, self.n, self.k))
        return dims if self.batch == 1 else f"{dims}x{self.batch}"

    def backward(self) -> tuple["Gemm", "Gemm"]:
        """dA = dC B^T: (m, k, n); dB = A^T dC: (k, n, m)."""
        data = Gemm(self.name, self.m, self.k, self.n, self.batch, "backward-data", self.executed,
                    self.on_chip)
        weight = Gemm(self.name, self.k, self.n, self.m, self.batch, "backward-weight",
                      self.executed, self.on_chip)
        return data, weight


def attended_keys(spec: ModelSpec, seq_len: int) -> float:
    """s_k: keys per query, from the attention core's FLOPs per token (2 a (d + d_v) s_k)."""
    return attention_core_flops_per_token(spec, seq_len) / (2 * (spec.q_width + spec.out_width))


def block_forward_gemms(spec: ModelSpec, *, micro_batch: int, seq_len: int, tp: int,
                        causal_skip: bool = False, ep: int = 1, capacity_factor: float = 1.0,
                        cp: int = 1, cp_kind: str = "allgather") -> tuple[Gemm, ...]:
    """One block's forward GEMMs on one TP (and CP) rank (table above). causal_skip: a fused
    attention kernel (flash attention; Dao 2023) that skips the masked half of the causal scores
    and keeps the score matrix on chip: each of its GEMMs, forward and backward, has one s x s_k
    operand that never reaches HBM. Context parallelism (context_parallel.py): every linear layer
    runs on T = b s / cp tokens; attention over the whole sequence's s_k keys runs for the rank's
    s/cp queries of every local head (all-gather form) or for all s queries of a/cp of them
    (all-to-all form): 1/cp of the attention either way."""
    s, b, t = seq_len, micro_batch, tp
    tokens = b * s / cp
    q_width = spec.heads * spec.head_dim
    keys = attended_keys(spec, s)
    heads_local = b * spec.heads // t
    queries = s / cp
    if cp > 1 and cp_kind == "alltoall":
        queries, heads_local = s, b * spec.heads // (t * cp)
    executed, on_chip = (0.5, queries * keys) if causal_skip else (1.0, 0.0)
    if spec.mla:     # the down-projections replicated over TP, the up-projections split
        gemms = [Gemm(name, tokens, width / (t if split else 1), k)
                 for name, k, width, split in mla_projections(spec)]
    else:
        gemms = [Gemm("qkv", tokens, (q_width + spec.kv_hidden + spec.v_width) / t, spec.hidden)]
    gemms += [
        Gemm("attention-scores", queries, keys, spec.head_dim, heads_local, executed=executed,
             on_chip=on_chip),
        Gemm("attention-values", queries, spec.value_head_dim, keys, heads_local, executed=executed,
             on_chip=on_chip),
        Gemm("out-proj", tokens, spec.hidden, spec.out_width / t),
    ]
    if spec.moe:
        return tuple(gemms) + moe_forward_gemms(spec, tokens=tokens, tp=t, ep=ep,
                                                capacity_factor=capacity_factor)
    gemms.append(Gemm("mlp-up", tokens, spec.ffn_hidden / t, spec.hidden))
    if spec.gated_mlp:
        gemms.append(Gemm("mlp-gate", tokens, spec.ffn_hidden / t, spec.hidden))
    gemms.append(Gemm("mlp-down", tokens, spec.hidden, spec.ffn_hidden / t))
    return tuple(gemms)


def moe_forward_gemms(spec: ModelSpec, *, tokens: int, tp: int, ep: int,
                      capacity_factor: float) -> tuple[Gemm, ...]:
    """An MoE block's MLP GEMMs on one GPU (table above): the router, the E/e local experts as one
    batched GEMM each of c T k e / E rows, the shared expert."""
    local = spec.experts // ep
    rows = capacity_factor * tokens * spec.experts_per_token * ep / spec.experts
    width = spec.expert_ffn_hidden / tp
    gemms = [Gemm("router", tokens, spec.experts, spec.hidden),
             Gemm("mlp-up", rows, width, spec.hidden, local)]
    if spec.gated_mlp:
        gemms.append(Gemm("mlp-gate", rows, width, spec.hidden, local))
    gemms.append(Gemm("mlp-down", rows, spec.hidden, width, local))
    if spec.shared_expert_ffn_hidden:
        shared = spec.shared_expert_ffn_hidden / tp
        gemms.append(Gemm("shared-up", tokens, shared, spec.hidden))
        if spec.gated_mlp:
            gemms.append(Gemm("shared-gate", tokens, shared, spec.hidden))
        gemms.append(Gemm("shared-down", tokens, spec.hidden, shared))
        if spec.shared_expert_gate:
            gemms.append(Gemm("shared-expert-gate", tokens, 1, spec.hidden))
    return tuple(gemms)


def head_forward_gemm(spec: ModelSpec, *, micro_batch: int, seq_len: int, tp: int) -> Gemm:
    """The LM head on this rank's slice of the padded vocabulary (what the kernel computes)."""
    return Gemm("head", micro_batch * seq_len, padded_vocab(spec.vocab, tp) / tp, spec.hidden)


def with_backward(forward: tuple[Gemm, ...]) -> tuple[Gemm, ...]:
    """Forward GEMMs followed by their backward-data and backward-weight GEMMs."""
    return forward + tuple(g for f in forward for g in f.backward())


def op_recomputed_gemms(spec: ModelSpec, *, micro_batch: int, seq_len: int, tp: int,
                        cp: int = 1) -> tuple[Gemm, ...]:
    """The GEMMs torchtitan's per-op selective checkpointing runs again in backward
    (parallelize_llama.py at 9dec370: its policy saves aten.mm's output unless the block's mm count
    is even, and saves flash attention's): every second matmul in the order its Llama block runs
    them, wq wk wv wo w1 w3 w2, i.e. wk, wo and w3 (SwiGLU's up; with a two-matrix MLP wk, wo, w2).
    A dense, non-MLA block (torchtitan's Llama); others take the attention core's (selective)."""
    tokens, t, h = micro_batch * seq_len / cp, tp, spec.hidden
    f = spec.ffn_hidden / t
    order = [("qkv", spec.q_width / t, h), ("qkv", spec.kv_hidden / t, h),
             ("qkv", spec.v_width / t, h), ("out-proj", h, spec.out_width / t)]
    order += ([("mlp-gate", f, h), ("mlp-up", f, h), ("mlp-down", h, f)] if spec.gated_mlp
              else [("mlp-up", f, h), ("mlp-down", h, f)])
    return tuple(Gemm(name, tokens, n, k) for i, (name, n, k) in enumerate(order) if i % 2 == 1)


def recomputed_gemms(forward: tuple[Gemm, ...], recompute: str) -> tuple[Gemm, ...]:
    """Forward GEMMs run again in backward: all under full recompute, the attention core's under
    selective, none otherwise."""
    if recompute == "full":
        return forward
    if recompute == "selective":
        return tuple(g for g in forward if g.name in ATTENTION_CORE)
    return ()


@functools.lru_cache(maxsize=4096)
def block_gemms(spec: ModelSpec, *, micro_batch: int, seq_len: int, tp: int, recompute: str,
                causal_skip: bool = False, ep: int = 1, capacity_factor: float = 1.0,
                cp: int = 1, cp_kind: str = "allgather") -> tuple[Gemm, ...]:
    """One block's GEMMs for one micro-batch: forward, backward, and what recompute repeats."""
    forward = block_forward_gemms(spec, micro_batch=micro_batch, seq_len=seq_len, tp=tp,
                                  causal_skip=causal_skip, ep=ep, capacity_factor=capacity_factor,
                                  cp=cp, cp_kind=cp_kind)
    return with_backward(forward) + recomputed_gemms(forward, recompute)


def stage_gemms(spec: ModelSpec, *, blocks: int, last: bool, micro_batch: int, seq_len: int,
                tp: int, recompute: str, causal_skip: bool = False, ep: int = 1,
                capacity_factor: float = 1.0, cp: int = 1, cp_kind: str = "allgather",
                dense_blocks: int = 0) -> list[tuple[Gemm, int]]:
    """(GEMM, how many times) for one micro-batch on one GPU of a stage: every block's list (an
    MoE model's first dense blocks, `dense_blocks` of the stage's, with their dense MLP), and on
    the last stage the head (forward and backward; never recomputed)."""
    shape = dict(micro_batch=micro_batch, seq_len=seq_len, tp=tp, recompute=recompute,
                 causal_skip=causal_skip, ep=ep, capacity_factor=capacity_factor, cp=cp,
                 cp_kind=cp_kind)
    out = [(g, blocks - dense_blocks) for g in block_gemms(spec, **shape)] if blocks > dense_blocks else []
    if dense_blocks:
        out += [(g, dense_blocks) for g in block_gemms(dense_variant(spec), **shape)]
    if last:
        head = head_forward_gemm(spec, micro_batch=micro_batch, seq_len=seq_len / cp, tp=tp)
        out += [(g, 1) for g in with_backward((head,))]
    return out


def stage_gemm_flops(gemms: list[tuple[Gemm, int]]) -> float:
    """Model FLOPs of a (GEMM, count) list."""
    return sum(g.flops * count for g, count in gemms)
