"""What a pipeline stage keeps for backward: saved activations per block, the LM head's logits,
micro-batches in flight. Memory per GPU (memory.py) adds these to the model states.

Symbols: s sequence length (s/cp per rank under context parallelism), b micro-batch, h hidden, a
heads, a_kv KV heads, d head dim, q = a d, f ffn hidden, V vocabulary, t tensor-parallel degree.

What a block saves depends on the code that runs it (engines.Engine.activations), each rule read off
that code:
- 'llmlaunch': model/'s eager modules, term by term as `llmlaunch validate` measures them
  (HF-style RMSNorm and RoPE copies, the gated MLP's four tensors);
- 'fused': Korthikanti et al. 2022's terms for fused kernels (Megatron-Core with Transformer
  Engine): the norms save their input only, RoPE is fused into the attention's inputs, the fused
  SwiGLU keeps its 2f input and the f-wide input of the down projection (3f, not the eager 4f);
  with FP8 (Transformer Engine) the linear layers' inputs are saved as FP8 copies (1 byte);
- 'torchtitan': torchtitan's eager Llama block; under its per-op selective checkpointing (the
  `_save_list` policy of torchtitan/parallelisms/parallelize_llama.py, commit 9dec370) a block keeps
  its input, the outputs of every other matmul in the order they run (wq, wk, wv, wo, w1, w3, w2:
  the 1st, 3rd, 5th and 7th are saved) and the flash-attention output with its log-sum-exp;
  everything else is recomputed in backward.
"""
from __future__ import annotations

import functools

from .model_spec import ModelSpec
from .params import padded_vocab

FP32_BYTES = 4
ACTIVATION_POLICIES = ("llmlaunch", "fused", "torchtitan")


@functools.lru_cache(maxsize=4096)
def saved_norm_input_bytes(spec: ModelSpec, act_bytes: int, norm_bytes: int | None) -> int:
    """Element size of a norm input saved for backward: norm_bytes for RMSNorm (HF's form upcasts
    to fp32), act_bytes otherwise (gpt2's LayerNorm saves its input as it is)."""
    return norm_bytes if norm_bytes is not None and spec.rms_norm else act_bytes


def mlp_activation_elements(spec: ModelSpec, tokens: float, tp: int, gated_width: int = 4) -> float:
    """Elements one block's MLP saves for `tokens` tokens, per TP rank: GELU input and output
    2 f, or the gated MLP's gate, activation(gate), up and their product 4 f per token (eager; a
    fused SwiGLU keeps 3 f: gated_width); an MoE layer saves that for each of the k experts a token
    is routed to (f_e wide) and for the shared expert (f_s), plus the router's logits and
    probabilities (2E, replicated). The routing's own buffers (token permutation, the expert inputs
    gathered k times) are not counted: see moe_note."""
    per_width = gated_width if spec.gated_mlp else 2
    if not spec.moe:
        return per_width * tokens * spec.ffn_hidden / tp
    elements = per_width * tokens * spec.experts_per_token * spec.expert_ffn_hidden / tp
    elements += per_width * tokens * spec.shared_expert_ffn_hidden / tp
    return elements + 2 * tokens * spec.experts


@functools.lru_cache(maxsize=4096)
def activation_bytes_per_layer(spec: ModelSpec, micro_batch: int, tp: int, recompute: str,
                               act_bytes: int = 2, flash_attention: bool = True,
                               dropout: bool = False, seq_len: int | None = None,
                               sequence_parallel: bool = False, norm_bytes: int | None = None,
                               policy: str = "llmlaunch", cp: int = 1, fp8: bool = False) -> float:
    """Bytes one block keeps for backward for one micro-batch, per TP (and CP) rank.

    With sequence_parallel (Megatron-LM, Korthikanti et al. 2022 Section 4.2.2) the terms that tensor
    parallelism replicates (norm inputs, QKV and MLP inputs, dropout masks, and the block input kept
    under full recompute) are split over the t ranks along the sequence: Table 2 gives
    sbh(34/t + 5as/(ht)) for gpt2 with dropout and no flash attention. Context parallelism splits
    every term over the cp ranks along the sequence (each holds s/cp tokens; the s x s scores of a
    materialised softmax become (s/cp) x s).

    Korthikanti et al. 2022 (Reducing Activation Recomputation), Section 4.1, eq. (1) and Table 2,
    term by term, generalised to GQA, an explicit head dim (q = a d), gated MLPs and MoE; with gpt2,
    dropout, no flash attention and 2-byte activations it is exactly sbh(10 + 24/t + 5as/(ht)).
    Terms (elements, x act_bytes):
      replicated over TP:  2 norm inputs 2sbh, QKV input sbh, MLP input sbh
      sharded over TP:     Q, K, V  sb(q + 2 a_kv d)/t, attention output sbq/t,
                           MLP: mlp_activation_elements (GELU 2sbf/t, gated 4sbf/t, MoE per expert)
      attention core:      without flash, softmax probabilities a s^2 b/t (and the dropout output
                           another a s^2 b/t); flash kernels keep only the log-sum-exp (fp32, asb/t)
      dropout masks (1 byte each): attention probs a s^2 b/t, after attention sbh, after MLP sbh
    selective recompute drops the attention core (recomputed in backward); full recompute keeps only
    the block input, 2sbh at 2 bytes (the per-stage function adds back one block being recomputed).

    The RMSNorm + RoPE families as model/layers.py builds them ('llmlaunch') save more than the
    paper's terms (found by `llmlaunch validate`: +20% at the tiny shape before these terms), all
    selected by the spec's features, so the gpt2 form above is untouched:
      RMSNorm, written as HF's LlamaRMSNorm in plain ops: the weight multiply saves the normalised
      tensor, act sbh per norm, 2 per block (replicated over TP)
      RoPE: the rotated q and k are new tensors that attention saves while the QKV output stays saved
      (v is a view of it): sb(q + a_kv d)/t more
      the cos/sin tables that the rotary multiplies save: s x d each, fp32 (2 x 4 bytes), or their
      per-use casts for q and k in a 16-bit run (4 x 2 bytes): 8 s d bytes either way
      QK-norm (Qwen3): each of the two RMSNorms saves its input (norm_bytes) and its normalised
      tensor (act): sb(q + a_kv d)/t x (norm_bytes + act_bytes)
    Norms beyond two per block (Gemma-2's post-norms) save their input and normalised tensor too.
    Per-token norm statistics (mean/rstd, 4-8 bytes a token per norm, under 8/h of the norm input)
    are not counted. norm_bytes (default act_bytes) is the element size of the saved RMSNorm
    inputs: 4 in a bf16 run, HF's RMSNorm upcasting to fp32.
    The 'fused' and 'torchtitan' policies (module docstring) change the terms as their code does.
    """
    if policy not in ACTIVATION_POLICIES:
        raise ValueError(f"activation policy {policy!r} is not one of {', '.join(ACTIVATION_POLICIES)}")
    s = (seq_len or spec.seq_len) / cp
    b, h, a, t = micro_batch, spec.hidden, spec.heads, tp
    sbh = s * b * h
    seq_split = t if sequence_parallel else 1
    if recompute == "full":
        return act_bytes * sbh / seq_split
    if policy == "torchtitan" and recompute == "selective":
        return torchtitan_selective_bytes(spec, s * b, tp, act_bytes, seq_split)
    fused = policy == "fused"
    norm_b = act_bytes if fused else saved_norm_input_bytes(spec, act_bytes, norm_bytes)
    linear_in = 1 if fused and fp8 else act_bytes      # Transformer Engine saves FP8 inputs
    norms = spec.block_norms
    replicated = (norms * norm_b + 2 * linear_in) * sbh / seq_split
    qkv = act_bytes * s * b * (spec.q_width + spec.kv_hidden + spec.v_width) / t
    attn_out = act_bytes * s * b * spec.out_width / t
    if fused and fp8:           # the out-projection's FP8 copy of the attention output
        attn_out += s * b * spec.out_width / t
    if spec.mla:                # the latent inputs of the up-projections, their norms' inputs
        latent = 2 * (spec.q_lora_rank + spec.kv_lora_rank) + spec.qk_rope_head_dim
        qkv += act_bytes * s * b * latent / seq_split
    mlp = act_bytes * mlp_activation_elements(spec, s * b, t, gated_width=3 if fused else 4)
    if fused and fp8:           # the down projection's input, saved as FP8 (1 of its f bytes)
        mlp -= (act_bytes - 1) * mlp_down_input_elements(spec, s * b, t)
    masks = 2 * sbh / seq_split if dropout else 0
    keys = s * cp                # every query attends over the whole sequence's keys
    if flash_attention:
        core = FP32_BYTES * a * s * b / t
    else:
        core = act_bytes * a * s * keys * b / t * (2 if dropout else 1) + (a * s * keys * b / t if dropout else 0)
    if recompute == "selective":
        core = 0
    ours = 0.0
    if not fused and spec.rms_norm:
        ours += act_bytes * norms * sbh / seq_split
    if not fused and spec.rotary:
        ours += act_bytes * s * b * (spec.q_width + spec.kv_hidden) / t + 8 * s * spec.head_dim
    if spec.qk_norm:
        ours += (norm_b + act_bytes) * s * b * (spec.q_width + spec.kv_hidden) / t
    return replicated + qkv + attn_out + mlp + masks + core + ours


def mlp_down_input_elements(spec: ModelSpec, tokens: float, tp: int) -> float:
    """Elements of the MLP's down-projection input per TP rank: f per token (k f_e + f_s in an MoE
    layer)."""
    width = spec.ffn_hidden
    if spec.moe:
        width = spec.experts_per_token * spec.expert_ffn_hidden + spec.shared_expert_ffn_hidden
    return tokens * width / tp


def matmul_outputs(spec: ModelSpec) -> list[tuple[float, bool]]:
    """(output width, split over TP) of a block's matmuls in the order torchtitan's Llama block
    runs them: wq, wk, wv, wo, then w1, w3 (gated) and w2 (an MoE layer: its k experts' and shared
    expert's widths in the same pattern). The row-parallel wo and w2 produce the whole h on every
    TP rank (partial sums, reduced after the matmul)."""
    f = spec.ffn_hidden
    if spec.moe:
        f = spec.experts_per_token * spec.expert_ffn_hidden + spec.shared_expert_ffn_hidden
    mlp = [(f, True), (f, True), (spec.hidden, False)] if spec.gated_mlp else [
        (f, True), (spec.hidden, False)]
    return [(spec.q_width, True), (spec.kv_hidden, True), (spec.kv_hidden, True),
            (spec.hidden, False)] + mlp


def torchtitan_selective_bytes(spec: ModelSpec, tokens: float, tp: int, act_bytes: int,
                               seq_split: int = 1) -> float:
    """What one block keeps under torchtitan's per-op selective checkpointing, per TP rank: the
    block input (the checkpoint's argument, act h per token, h/t when the norms are sequence-
    parallel), the output of every other matmul (the 1st, 3rd, ... of matmul_outputs: the policy
    saves aten.mm unless its per-block count is even), the flash attention's output (act q) and its
    log-sum-exp (fp32, a per token)."""
    saved = [width / (tp if split else 1)
             for i, (width, split) in enumerate(matmul_outputs(spec)) if i % 2 == 0]
    per_token = act_bytes * (spec.hidden / seq_split + sum(saved) + spec.q_width / tp)
    return tokens * (per_token + FP32_BYTES * spec.heads / tp)


def logits_bytes(spec: ModelSpec, micro_batch: int, tp: int, act_bytes: int = 2,
                 seq_len: int | None = None, cp: int = 1, per_element: float = 0.0) -> float:
    """LM head buffers on the last stage for one micro-batch, per TP rank: the logits in the
    compute dtype, their fp32 softmax kept for backward, and the fp32 gradient of the logits during
    backward: s b V_pad/t (act_bytes + 4 + 4); per_element, when given, is the engine's own figure
    (engines.Engine.logits_bytes: torchtitan's loss takes the logits to fp32 first). Large at big
    vocabularies (BLOOM's 250k). Of these only the softmax is saved by autograd
    (logits_saved_bytes); the logits are the stage output the pipeline engine holds and the gradient
    exists during backward only."""
    s = (seq_len or spec.seq_len) / cp
    return s * micro_batch * padded_vocab(spec.vocab, tp) / tp * (per_element or act_bytes + 2 * FP32_BYTES)


def logits_saved_bytes(spec: ModelSpec, micro_batch: int, tp: int,
                       seq_len: int | None = None, cp: int = 1) -> float:
    """The part of logits_bytes that autograd saves for backward: the vocab-parallel cross-entropy's
    fp32 softmax, s b V_pad/t x 4 (model/tp.py saves nothing else of size V)."""
    s = (seq_len or spec.seq_len) / cp
    return s * micro_batch * padded_vocab(spec.vocab, tp) / tp * FP32_BYTES


def saved_activation_bytes(spec: ModelSpec, *, stage: int, pp: int, blocks: int, micro_batch: int,
                           tp: int, recompute: str, act_bytes: int, flash_attention: bool = True,
                           seq_len: int | None = None, sequence_parallel: bool = False,
                           norm_bytes: int | None = None, policy: str = "llmlaunch", cp: int = 1,
                           fp8: bool = False) -> float:
    """Bytes that one micro-batch's forward on one GPU of `stage` leaves saved for backward (what
    `llmlaunch validate` measures with saved-tensor hooks): the stage's blocks, and on the last
    stage the final-norm input, the head input and the cross-entropy's fp32 softmax. A stage holds
    this once per micro-batch in flight (micro_batches_in_flight), plus transient_activation_bytes."""
    saved = blocks * activation_bytes_per_layer(spec, micro_batch, tp, recompute, act_bytes,
                                                flash_attention, seq_len=seq_len,
                                                sequence_parallel=sequence_parallel,
                                                norm_bytes=norm_bytes, policy=policy, cp=cp, fp8=fp8)
    if stage == pp - 1:
        s = (seq_len or spec.seq_len) / cp
        # the final norm's input (norm_bytes for RMSNorm) and the head input; RMSNorm also
        # saves its normalised tensor (see activation_bytes_per_layer) unless fused
        fused = policy == "fused"
        inputs = 2 if spec.rms_norm and not fused else 1
        norm_b = act_bytes if fused else saved_norm_input_bytes(spec, act_bytes, norm_bytes)
        saved += (norm_b + inputs * act_bytes) * s * micro_batch * spec.hidden
        saved += logits_saved_bytes(spec, micro_batch, tp, seq_len, cp)
    return saved


def transient_activation_bytes(spec: ModelSpec, *, stage: int, pp: int, micro_batch: int, tp: int,
                               recompute: str, act_bytes: int, flash_attention: bool = True,
                               seq_len: int | None = None, sequence_parallel: bool = False,
                               norm_bytes: int | None = None, policy: str = "llmlaunch",
                               cp: int = 1, fp8: bool = False, logits_per_element: float = 0.0) -> float:
    """Activation memory beyond the saved tensors at a stage's peak, once (not per micro-batch in
    flight): with full recompute (and torchtitan's selective, which recomputes most of a block),
    the block being recomputed in backward holds its full activations; on the last stage, the
    logits in the compute dtype and their fp32 gradient in backward."""
    extra = 0.0
    if recompute == "full" or (recompute == "selective" and policy == "torchtitan"):
        extra += activation_bytes_per_layer(spec, micro_batch, tp, "none", act_bytes,
                                            flash_attention, seq_len=seq_len,
                                            sequence_parallel=sequence_parallel,
                                            norm_bytes=norm_bytes, policy=policy, cp=cp, fp8=fp8)
    if stage == pp - 1:
        extra += (logits_bytes(spec, micro_batch, tp, act_bytes, seq_len, cp, logits_per_element)
                  - logits_saved_bytes(spec, micro_batch, tp, seq_len, cp))
    return extra


def micro_batches_in_flight(stage: int, pp: int, micro_batches: int, virtual_stages: int = 1) -> float:
    """Micro-batches of a whole stage's activations that stage i holds at its peak.

    1F1B: stage i runs p - i forwards before its first backward, so it keeps min(p - i, m)
    (Narayanan et al. 2021, Section 2.2.1): the first stage the most.
    Interleaved (v model chunks of 1/v of the stage's blocks each): Megatron-LM warms up
    2(p - i - 1) + (v - 1)p chunks and holds one more, at most m*v; in whole-stage units that count
    over v. For i = 0 it is p + (p - 1)/v: Korthikanti et al. 2022's factor (1 + (p - 1)/(pv))."""
    if virtual_stages == 1:
        return min(pp - stage, micro_batches)
    chunks = 2 * (pp - stage - 1) + (virtual_stages - 1) * pp + 1
    return min(chunks, micro_batches * virtual_stages) / virtual_stages
