"""Memory-bound kernels: the bytes each reads and writes per token, fused or not.

Norms, activation functions, residual adds, dropout, the softmax of a materialised score matrix,
RoPE and the cross-entropy do a few FLOPs per element: their time is the bytes they move over HBM
bandwidth (the roofline's memory side). Which kernels run, and how many passes each makes, depends
on the implementation, so each is listed per kernel set (KernelSet below):

- "megatron-2021": Megatron-LM as Narayanan et al. 2021 ran it (and Megatron-DeepSpeed, metaseq):
  fused bias+GeLU, bias+dropout+add and scale+mask+softmax (Shoeybi et al. 2019; Narayanan et al.
  2021, §4.2), each reading its inputs and writing its outputs once; the LayerNorm of
  megatron/fused_kernels/layer_norm_cuda_kernel.cu (apex's FusedLayerNorm), whose backward is two
  kernels that each read the input and the output gradient (cuComputePartGradGammaBeta for the
  weight and bias gradients, cuComputeGradInput for the input's): 5 activation passes, not 3;
  linear layers through PyTorch's linear on a 3-D input, which adds a bias in its own kernel after
  the GEMM (QKV's; the other layers pass theirs to the fused kernels), and autograd's bias
  gradients, each a reduction reading the output gradient; the Q, K, V gradients concatenated back
  into the QKV output's (the backward of split_tensor_along_last_dim).
- "megatron-2022": Megatron-LM with sequence parallelism (Korthikanti et al. 2022,
  megatron/model/fused_layer_norm.py, 2022): as 2021, but the persistent LayerNorm (apex contrib
  FastLayerNorm, for the hidden sizes it lists) computes the input, weight and bias gradients in one
  pass: 3; the linear function (megatron/mpu/layers.py) adds QKV's bias and sums bias gradients in
  their own kernels likewise.
- "megatron": the fused kernels with one-pass norms and no separate bias kernels (Llama 3: no
  biases; the report names no kernels).
- "inductor": a block under torch.compile (torchtitan's per-block compile): TorchInductor fuses
  each chain of element-wise ops and reductions between two matmuls into one generated kernel that
  reads its inputs once and writes its outputs once (Ansel et al. 2024, PyTorch 2, ASPLOS, §4: "
  TorchInductor ... fuses pointwise and reduction operations"), so a norm, SwiGLU and RoPE move
  what the fused set's kernels move.
- "llm-foundry": MPT's blocks as llm-foundry's benchmarks ran them (llmfoundry/models/layers/
  attention.py and norm.py at 5e85bd62d): PyTorch's own kernels op by op; its low-precision
  LayerNorm is F.layer_norm, whose CUDA backward is two kernels that each read the input and the
  output gradient (aten/src/ATen/native/cuda/layer_norm_kernel.cu: the input gradient, then
  GammaBetaBackward): 5 passes; and flash_attn_fn unpads Q, K, V before flash-attn's varlen
  kernel and pads its output after (flash_attn.bert_padding): forward three gathers (read, write)
  and a scatter into zeros (write, read, write), backward the reverse.
- "eager": llmlaunch's model/ under PyTorch eager (model/layers.py, model/tp.py): every op one
  kernel, counted op by op (HF-style RMSNorm and RoPE are several each).

Per token and TP rank, with A bytes per activation element, h' = h (h/t under sequence
parallelism) for the replicated ops, f' = f/t, q' = a d/t, kv' = a_kv d/t, a' = a/t heads attending
to s_k keys each. A dropout mask is 1 byte per element. The norms' per-token statistics are not
counted (under 1/h of the rest); bias gradients are not counted in the "megatron" and "eager" sets.
"""
from __future__ import annotations

from dataclasses import dataclass

from .gemms import attended_keys
from .model_spec import ModelSpec
from .params import padded_vocab

FP32 = 4
MASK = 1


@dataclass(frozen=True)
class KernelSet:
    """How an implementation runs a block's memory-bound work (module docstring)."""

    name: str
    fused: bool
    """Megatron's fused softmax, bias-GeLU / SwiGLU, bias-dropout-add and one-kernel norms; False:
    model/'s eager ops."""
    norm_backward_passes: int = 3
    """Activation-sized passes of a fused LayerNorm's backward: 3 (read x and dy, write dx) or 5
    (the weight-gradient kernel reads x and dy first)."""
    bias_kernels: bool = False
    """QKV's bias added after the GEMM in its own kernel; every bias gradient a reduction over the
    output gradient; the Q, K, V gradients concatenated."""
    unpadded_attention: bool = False
    """The flash attention call is fed unpadded rows (llm-foundry's flash_attn_fn: flash-attn's
    bert_padding.unpad_input gathers Q, K and V, pad_input scatters the output back into zeros;
    their backward the reverse)."""


@dataclass(frozen=True)
class MemoryKernel:
    """Bytes per token a kernel moves in forward and in backward; `core` marks the attention core
    (what selective recompute runs again)."""

    name: str
    forward_bytes: float
    backward_bytes: float
    core: bool = False


KERNEL_SETS = {ks.name: ks for ks in (
    KernelSet("megatron-2021", fused=True, norm_backward_passes=5, bias_kernels=True),
    KernelSet("megatron-2022", fused=True, norm_backward_passes=3, bias_kernels=True),
    KernelSet("megatron", fused=True),
    KernelSet("inductor", fused=True),
    KernelSet("llm-foundry", fused=False, norm_backward_passes=5, unpadded_attention=True),
    KernelSet("eager", fused=False),
)}


def kernel_set(name: str) -> KernelSet:
    if name not in KERNEL_SETS:
        raise ValueError(f"kernel set {name!r} is not one of {', '.join(KERNEL_SETS)}")
    return KERNEL_SETS[name]


def _norm(spec: ModelSpec, width: float, ks: KernelSet, act: int, name: str) -> MemoryKernel:
    """LayerNorm (one kernel forward, norm_backward_passes activation passes backward) or RMSNorm:
    fused, or HF's LlamaRMSNorm op by op in eager mode (x.float(); pow; mean; x32 * rsqrt; .to();
    weight *: 28 + 4A bytes an element forward, 60 + 8A backward)."""
    if spec.arch == "llama" and not ks.fused:
        return MemoryKernel(name, (28 + 4 * act) * width, (60 + 8 * act) * width)
    passes = ks.norm_backward_passes if spec.norm == "layernorm" else 3
    return MemoryKernel(name, 2 * act * width, passes * act * width)


def block_kernels(spec: ModelSpec, *, kernels: str, tp: int, seq_len: int, act: int,
                  flash_attention: bool, dropout: bool, sequence_parallel: bool = False,
                  score_bias: bool = False) -> tuple[MemoryKernel, ...]:
    """One block's memory-bound kernels on one TP rank (bytes per token). score_bias: the scores
    GEMM accumulates onto a materialised bias (Megatron-DeepSpeed's ALiBi, baddbmm(alibi, q, k,
    beta=1): PyTorch first copies the broadcast bias into the [b a', s, s_k] result, write A, and
    the GEMM reads it back, read A, per score)."""
    ks = kernel_set(kernels)
    t = tp
    h = spec.hidden / (t if sequence_parallel else 1)
    f, q, kv = spec.ffn_hidden / t, spec.heads * spec.head_dim / t, spec.kv_hidden / t
    if spec.moe:  # the activation runs on the k routed experts' and the shared expert's widths
        f = (spec.experts_per_token * spec.expert_ffn_hidden + spec.shared_expert_ffn_hidden) / t
    scores = spec.heads / t * attended_keys(spec, seq_len)
    out = [_norm(spec, h, ks, act, "input-norm"), _norm(spec, h, ks, act, "post-attention-norm"),
           # the residual stream's two gradients (through the branch, around it) summed, twice
           MemoryKernel("residual-grad-add", 0, 2 * 3 * act * h)]
    if dropout:   # bias + dropout + residual add, fused (mask kept), after attention and after MLP
        out.append(MemoryKernel("bias-dropout-add", 2 * (3 * act + MASK) * h, 2 * (2 * act + MASK) * h))
    else:         # residual add (read 2, write 1); its gradient passes through
        out.append(MemoryKernel("residual-add", 2 * 3 * act * h, 0))
    if spec.gated_mlp:    # silu(gate) * up: fused (read 2f', write f'), or silu then mul
        out.append(MemoryKernel("swiglu", (3 if ks.fused else 5) * act * f, (5 if ks.fused else 13) * act * f))
    else:                 # (bias +) GeLU: fused, or F.gelu after the GEMM's bias epilogue
        out.append(MemoryKernel("gelu", 2 * act * f, 3 * act * f))
    if spec.arch == "llama":   # RoPE on Q and K: one fused pass, or HF's mul/rotate_half/cat/mul/add
        passes = 2 if ks.fused else 10
        out.append(MemoryKernel("rope", passes * act * (q + kv), passes * act * (q + kv)))
    # the attention context [b, a/t, s, d] -> [b, s, a d / t]: one copy
    out.append(MemoryKernel("context-transpose", 2 * act * q, 0))
    if ks.unpadded_attention:
        qkv = q + 2 * kv
        out.append(MemoryKernel("attention-unpad", 2 * act * qkv + 3 * act * q,
                                2 * act * q + 3 * act * qkv))
    if ks.bias_kernels:
        qkv = q + 2 * kv
        if spec.qkv_bias:   # output += bias (read, write); its gradient a sum over tokens (read)
            out.append(MemoryKernel("qkv-bias", 2 * act * qkv, act * qkv))
        if spec.biases:     # the MLP-in bias's gradient (bias-GeLU returns it token by token) and
            # the replicated out-projection and MLP-out biases' (after the bias-dropout-add)
            out.append(MemoryKernel("bias-grads", 0, act * (f + 2 * h)))
        out.append(MemoryKernel("qkv-grad-concat", 0, 2 * act * qkv))   # read q, k, v grads; write
    if not flash_attention:
        # scale + mask + softmax of the a' s_k scores: one fused kernel, or SDPA's math path
        # (scale q, add mask, softmax); backward reads probabilities and their gradient
        fwd = 2 * act * scores if ks.fused else 4 * act * scores + 2 * act * q
        bwd = 3 * act * scores if ks.fused else 5 * act * scores + 2 * act * q
        out.append(MemoryKernel("softmax", fwd, bwd, core=True))
        if score_bias:
            out.append(MemoryKernel("score-bias", 2 * act * scores, 0, core=True))
        if dropout:
            out.append(MemoryKernel("attention-dropout", (2 * act + MASK) * scores,
                                    (2 * act + MASK) * scores, core=True))
    return tuple(out)


def block_kernel_bytes(kernels: tuple[MemoryKernel, ...], recompute: str) -> float:
    """Bytes per token of one block: forward + backward, plus the forward again of what recompute
    repeats (all of it under full and under torchtitan's per-op selective policy, gemms.OP_SELECTIVE;
    the attention core under selective)."""
    total = sum(k.forward_bytes + k.backward_bytes for k in kernels)
    if recompute in ("full", "selective-op"):   # torchtitan's per-op policy recomputes every
        # element-wise op (it saves only matmul, attention and reduce-scatter outputs)
        total += sum(k.forward_bytes for k in kernels)
    elif recompute == "selective":
        total += sum(k.forward_bytes for k in kernels if k.core)
    return total


def cross_entropy_bytes_per_token(spec: ModelSpec, *, kernels: str, tp: int, act: int) -> float:
    """The vocab-parallel cross-entropy over this rank's V_p/t logits, in fp32 (both sets upcast).
    Megatron-LM: .float() (A + 4), max (4), in-place subtract (8), exp (8), sum (4), divide (8);
    backward multiply (8) and the cast back (4 + A). model/tp.py also masks the padding (8) and
    subtracts and divides out of place, and clones the softmax in backward (8)."""
    vocab = padded_vocab(spec.vocab, tp) / tp
    per_element = (act + 36) + (act + 12) if kernel_set(kernels).fused else (act + 44) + (act + 20)
    return vocab * per_element


def head_kernel_bytes(spec: ModelSpec, *, kernels: str, tp: int, act: int,
                      sequence_parallel: bool = False) -> float:
    """The last stage beyond its blocks: final norm, forward and backward, and the cross-entropy."""
    h = spec.hidden / (tp if sequence_parallel else 1)
    norm = _norm(spec, h, kernel_set(kernels), act, "final-norm")
    return (norm.forward_bytes + norm.backward_bytes
            + cross_entropy_bytes_per_token(spec, kernels=kernels, tp=tp, act=act))


def embedding_kernel_bytes(spec: ModelSpec, *, act: int, dropout: bool = False) -> float:
    """The first stage: the token rows gathered (read and write h) and their gradient scattered
    back (read and write h); learned positions add read 2h, write h forward and a read backward;
    the embeddings' dropout (Megatron-LM's embedding_dropout) reads h and writes h and its mask
    forward, and reads the gradient and the mask and writes h backward."""
    h = spec.hidden
    positions = 4 * act * h if spec.learned_positions else 0
    drop = 2 * (2 * act + MASK) * h if dropout else 0
    return 4 * act * h + positions + drop
