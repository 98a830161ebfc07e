"""Memory per GPU: model states under ZeRO, activations per layer and per pipeline stage, buffers.

Symbols: s sequence length, b micro-batch, h hidden, a heads, a_kv KV heads, f ffn hidden,
t tensor-parallel degree, p pipeline stages, m micro-batches per step, d data-parallel degree,
Psi parameters held by one GPU.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .experts import expert_data_parallel, expert_params_held
from .model_spec import ModelSpec
from .params import embedding_params, head_params, layer_params, padded_vocab
from .stage_split import split_stages

GIB = 1024 ** 3
FP32_BYTES = 4

# Memory the caching allocator reserves beyond what tensors use (block rounding, fragmentation):
# a stated allowance as a fraction of the allocated bytes, applied the same way to every layout.
FRAGMENTATION_FRACTION = 0.05
# DeepSpeed communication buckets, in elements: the values `plan --emit` writes into ds_config.json
# (reduce_bucket_size, allgather_bucket_size; stage3_max_live_parameters for ZeRO-3).
REDUCE_BUCKET_ELEMENTS = int(2e8)
ALLGATHER_BUCKET_ELEMENTS = int(2e8)
ZERO3_MAX_LIVE_PARAMETERS = int(1e9)
# ZeRO-3's prefetch of the next modules' parameters and the size under which a parameter stays
# whole on every rank (never partitioned): DeepSpeed's defaults, written into ds_config.json.
ZERO3_PREFETCH_ELEMENTS = int(5e7)
ZERO3_PERSISTENCE_THRESHOLD = int(1e5)
ZERO3_MAX_REUSE_DISTANCE = int(1e9)
# ZeRO-3 runs the optimizer (and the fp32 gradient copy) one sub-group of the flat partition at a
# time: DeepSpeed's default sub_group_size, which ds_config.json leaves as it is.
ZERO3_SUB_GROUP_ELEMENTS = int(1e9)


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each model state, and bytes per activation element."""

    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    zero_master_bytes: int = 0
    """An fp32 master copy that DeepSpeed's ZeRO optimizer (stage 1/2) keeps on top of
    optimizer_bytes, partitioned like them: nonzero only where optimizer_bytes has no master copy."""
    lp_grad_bytes: int = 0
    """A low-precision gradient kept beside the grad_bytes accumulation buffer at ZeRO 0/1: DeepSpeed's
    BF16_Optimizer adds each micro-batch's bf16 param.grad into its fp32 buffer and zeroes it, so
    both stay allocated (measured by `llmlaunch validate`: 6 bytes per parameter, unpartitioned)."""
    norm_input_bytes: int = 0
    """Bytes per element of the input llama's RMSNorm saves for backward; 0 means activation_bytes
    (fused kernels). model/layers.py's RMSNorm is HF's LlamaRMSNorm, which upcasts to fp32, so
    autograd saves an fp32 copy in a bf16 run. (gpt2's LayerNorm saves its input as it is.)"""
    bf16_optimizer: bool = False
    """At ZeRO 0/1 DeepSpeed runs this precision through BF16_Optimizer (bf16 with fp32 gradient
    accumulation): it has none of ZeRO's communication buckets, and the pipeline engine all-reduces
    its single flat fp32 gradient buffer in place (DeepSpeed's `buffered_allreduce_fallback`
    flattens a one-tensor bucket to a view: no copy), so it needs no buffer beyond the states."""

    @property
    def norm_bytes(self) -> int:
        return self.norm_input_bytes or self.activation_bytes


PRECISIONS = {
    # bf16 mixed precision as DeepSpeed runs it with a pipeline (BF16_Optimizer, the config that
    # `plan --emit` writes) on llmlaunch's model: bf16 weights, gradients accumulated in fp32
    # (grad_accum_dtype fp32) next to the bf16 .grad, fp32 master weights + Adam m and v = 12 bytes
    # (Rajbhandari et al. 2020, K = 12), llama's RMSNorm upcasting to fp32.
    "bf16": Precision(weight_bytes=2, grad_bytes=4, optimizer_bytes=12, activation_bytes=2,
                      lp_grad_bytes=2, norm_input_bytes=4, bf16_optimizer=True),
    # The accounting of the published runs' papers (Megatron-LM's mixed precision): fp32 main
    # gradients and no 16-bit gradient kept, fused norm kernels that save the 16-bit input.
    # Used for topology/data/published_runs.yaml, not offered by the CLI (llmlaunch runs "bf16").
    "bf16-megatron": Precision(weight_bytes=2, grad_bytes=4, optimizer_bytes=12, activation_bytes=2),
    # plain fp32 AdamW (CPU runs): no master copy, Adam m and v. Under ZeRO >= 1,
    # DeepSpeedZeroOptimizer clones this rank's partition of the weights into an fp32 master
    # (single_partition_of_fp32_groups, runtime/zero/stage_1_and_2.py) even when the weights are
    # already fp32, so the optimizer holds 4 + 8 bytes per parameter / dp: measured by
    # `llmlaunch validate` on CPU (docs/validation.md).
    "fp32": Precision(weight_bytes=4, grad_bytes=4, optimizer_bytes=8, activation_bytes=4,
                      zero_master_bytes=4),
}


def model_state_bytes(params: float, dp: int, zero_stage: int, precision: Precision) -> dict:
    """Weights, gradients and optimizer states of `params` parameters on one GPU under ZeRO.

    Rajbhandari et al. 2020 (ZeRO), Section 5 / Figure 1: stage 1 (P_os) divides the optimizer
    states by N_d, stage 2 (P_os+g) also the gradients, stage 3 (P_os+g+p) also the weights.
    Under ZeRO the optimizer also holds the precision's zero_master_bytes (DeepSpeed's fp32 master
    partition of an fp32 model; 0 for the paper's mixed precision, whose K = 12 includes it).
    """
    master = precision.zero_master_bytes if zero_stage >= 1 else 0
    optimizer_bytes = precision.optimizer_bytes + master
    return {
        "weights": params * precision.weight_bytes / (dp if zero_stage >= 3 else 1),
        "gradients": (params * precision.grad_bytes / (dp if zero_stage >= 2 else 1)
                      + (params * precision.lp_grad_bytes if zero_stage <= 1 else 0)),
        "optimizer": params * optimizer_bytes / (dp if zero_stage >= 1 else 1),
    }


def zero_gradient_bytes(params: float, dp: int, zero_stage: int, precision: Precision,
                        offload: str = "none") -> float:
    """Gradient bytes on one GPU at ZeRO-2/3 as DeepSpeed 0.19 allocates them (measured by
    `llmlaunch validate`, docs/validation.md), Psi = params, N = dp, g = the model dtype's bytes
    (DeepSpeed reduces ZeRO-2/3 gradients in the model dtype: ds_config sets no fp32 accumulation):
      the gradient partition, g Psi/N (stage_1_and_2.py grads_in_partition; stage3.py
        grad_partitions_flat_buffer; with offload_optimizer it lives on the CPU instead);
      plus the larger of two moments that never coincide:
        during backward, the micro-batch's unreduced gradients up to one reduce bucket,
          g min(Psi, reduce_bucket_size) (the ipg bucket, reduced every micro-batch);
        in the optimizer step, the fp32 copy of the partition given to the optimizer,
          4 Psi/N (ZeRO-3: one sub-group at a time); none when g is already 4 (the copy is the
          partition itself) or when the optimizer runs on the CPU.
    DeepSpeed's estimate_zero2_model_states_mem_needs counts 2 Psi + 18 Psi/N for bf16: weights 2
    Psi, optimizer 12 Psi/N, and these 2 + 4 per parameter (its "2_grads_16bit + 4_grads_32bit"),
    i.e. this function when 4 Psi/N exceeds the bucket; in fp32 there is no separate 4 Psi/N."""
    g = precision.weight_bytes
    bucket = min(params, REDUCE_BUCKET_ELEMENTS) * g
    if offload != "none":
        return bucket
    per_rank = params / dp
    if zero_stage >= 3:
        per_rank = min(per_rank, ZERO3_SUB_GROUP_ELEMENTS)
    fp32_copy = per_rank * FP32_BYTES if g != FP32_BYTES else 0.0
    return params * g / dp + max(bucket, fp32_copy)


def deepspeed_model_state_bytes(params: float, dp: int, zero_stage: int, precision: Precision,
                                offload: str = "none") -> dict:
    """Weights, gradients and optimizer states on one GPU as DeepSpeed runs the stage (the planner's
    model; model_state_bytes is the paper's). ZeRO 0/1: model_state_bytes. ZeRO-2/3: gradients
    from zero_gradient_bytes; the optimizer holds the fp32 master (in optimizer_bytes, or
    zero_master_bytes for an fp32 model: DeepSpeedZeroOptimizer clones it, and so does ZeRO-3,
    stage3.py _create_fp32_partitions, whose no-copy branch compares a torch.device with a device
    name string, never equal: measured by `llmlaunch validate`) and Adam's m and v, all / N. Offload (ZeRO-Offload, Ren et al. 2021): 'optimizer' moves the optimizer
    states and the gradient partitions to CPU memory, 'optimizer+params' also the weight partitions
    (ZeRO-3); what stays on the GPU matches DeepSpeed's estimators with cpu_offload (ZeRO-2: 2 Psi;
    ZeRO-3: 2 Psi/N, or nothing with the parameters offloaded) plus the reduce bucket."""
    if zero_stage <= 1 and offload == "none":
        return model_state_bytes(params, dp, zero_stage, precision)
    master = precision.zero_master_bytes
    weights = params * precision.weight_bytes / (dp if zero_stage >= 3 else 1)
    return {
        "weights": 0.0 if offload == "optimizer+params" else weights,
        "gradients": zero_gradient_bytes(params, dp, zero_stage, precision, offload),
        "optimizer": 0.0 if offload != "none" else params * (precision.optimizer_bytes + master) / dp,
    }


def offloaded_bytes(params: float, dp: int, precision: Precision, offload: str) -> float:
    """Bytes one GPU's rank keeps in CPU memory under offload: the fp32 master, Adam's m and v and
    the fp32 gradient partition (4 + 8 + 4 = 16 Psi/N: DeepSpeed's estimators count 16 Psi/N of host
    memory, or 18 with the weights), plus the weight partition when parameters are offloaded."""
    if offload == "none":
        return 0.0
    states = params / dp * (FP32_BYTES + 2 * FP32_BYTES + FP32_BYTES)
    if offload == "optimizer+params":
        states += params / dp * precision.weight_bytes
    return states


@functools.lru_cache(maxsize=4096)
def saved_norm_input_bytes(spec: ModelSpec, act_bytes: int, norm_bytes: int | None) -> int:
    """Element size of a norm input saved for backward: norm_bytes for RMSNorm (HF's form upcasts
    to fp32), act_bytes otherwise (gpt2's LayerNorm saves its input as it is)."""
    return norm_bytes if norm_bytes is not None and spec.rms_norm else act_bytes


def mlp_activation_elements(spec: ModelSpec, tokens: float, tp: int) -> float:
    """Elements one block's MLP saves for `tokens` tokens, per TP rank: GELU input and output
    2 f, or the gated MLP's gate, activation(gate), up and their product 4 f, per token; an MoE layer
    saves that for each of the k experts a token is routed to (f_e wide) and for the shared expert
    (f_s), plus the router's logits and probabilities (2E, replicated). The routing's own buffers
    (token permutation, the expert inputs gathered k times) are not counted: see moe_note."""
    per_width = 4 if spec.gated_mlp else 2
    if not spec.moe:
        return per_width * tokens * spec.ffn_hidden / tp
    elements = per_width * tokens * spec.experts_per_token * spec.expert_ffn_hidden / tp
    elements += per_width * tokens * spec.shared_expert_ffn_hidden / tp
    return elements + 2 * tokens * spec.experts


def activation_bytes_per_layer(spec: ModelSpec, micro_batch: int, tp: int, recompute: str,
                               act_bytes: int = 2, flash_attention: bool = True,
                               dropout: bool = False, seq_len: int | None = None,
                               sequence_parallel: bool = False, norm_bytes: int | None = None) -> float:
    """Bytes one block keeps for backward for one micro-batch, per TP rank.

    With sequence_parallel (Megatron-LM, Korthikanti et al. 2022 Section 4.2.2) the terms that tensor
    parallelism replicates (norm inputs, QKV and MLP inputs, dropout masks, and the block input kept
    under full recompute) are split over the t ranks along the sequence: Table 2 gives
    sbh(34/t + 5as/(ht)) for gpt2 with dropout and no flash attention.

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

    The RMSNorm + RoPE families as model/layers.py builds them save more than the paper's terms
    (found by `llmlaunch validate`: +20% at the tiny shape before these terms), all selected by the
    spec's features, so the gpt2 form above is untouched:
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
    """
    s = seq_len or spec.seq_len
    b, h, a, t = micro_batch, spec.hidden, spec.heads, tp
    sbh = s * b * h
    if recompute == "full":
        return act_bytes * sbh / (t if sequence_parallel else 1)
    seq_split = t if sequence_parallel else 1
    norm_b = saved_norm_input_bytes(spec, act_bytes, norm_bytes)
    norms = spec.block_norms
    replicated = (norms * norm_b + 2 * act_bytes) * sbh / seq_split
    qkv = act_bytes * s * b * (spec.q_width + 2 * spec.kv_hidden) / t
    attn_out = act_bytes * s * b * spec.q_width / t
    mlp = act_bytes * mlp_activation_elements(spec, s * b, t)
    masks = 2 * sbh / seq_split if dropout else 0
    if flash_attention:
        core = FP32_BYTES * a * s * b / t
    else:
        core = act_bytes * a * s * s * b / t * (2 if dropout else 1) + (a * s * s * b / t if dropout else 0)
    if recompute == "selective":
        core = 0
    ours = 0.0
    if spec.rms_norm:
        ours += act_bytes * norms * sbh / seq_split
    if spec.rotary:
        ours += act_bytes * s * b * (spec.q_width + spec.kv_hidden) / t + 8 * s * spec.head_dim
    if spec.qk_norm:
        ours += (norm_b + act_bytes) * s * b * (spec.q_width + spec.kv_hidden) / t
    return replicated + qkv + attn_out + mlp + masks + core + ours


def logits_bytes(spec: ModelSpec, micro_batch: int, tp: int, act_bytes: int = 2,
                 seq_len: int | None = None) -> float:
    """LM head buffers on the last stage for one micro-batch, per TP rank: the logits in the
    compute dtype, their fp32 softmax kept for backward, and the fp32 gradient of the logits during
    backward: s b V_pad/t (act_bytes + 4 + 4). Large at big vocabularies (BLOOM's 250k).
    Of these only the softmax is saved by autograd (logits_saved_bytes); the logits are the stage
    output the pipeline engine holds and the gradient exists during backward only."""
    s = seq_len or spec.seq_len
    return s * micro_batch * padded_vocab(spec.vocab, tp) / tp * (act_bytes + 2 * FP32_BYTES)


def logits_saved_bytes(spec: ModelSpec, micro_batch: int, tp: int,
                       seq_len: int | None = None) -> float:
    """The part of logits_bytes that autograd saves for backward: the vocab-parallel cross-entropy's
    fp32 softmax, s b V_pad/t x 4 (model/tp.py saves nothing else of size V)."""
    s = seq_len or spec.seq_len
    return s * micro_batch * padded_vocab(spec.vocab, tp) / tp * FP32_BYTES


def saved_activation_bytes(spec: ModelSpec, *, stage: int, pp: int, blocks: int, micro_batch: int,
                           tp: int, recompute: str, act_bytes: int, flash_attention: bool = True,
                           seq_len: int | None = None, sequence_parallel: bool = False,
                           norm_bytes: int | None = None) -> float:
    """Bytes that one micro-batch's forward on one GPU of `stage` leaves saved for backward (what
    `llmlaunch validate` measures with saved-tensor hooks): the stage's blocks, and on the last
    stage the final-norm input, the head input and the cross-entropy's fp32 softmax. A stage holds
    this once per micro-batch in flight (micro_batches_in_flight), plus transient_activation_bytes."""
    saved = blocks * activation_bytes_per_layer(spec, micro_batch, tp, recompute, act_bytes,
                                                flash_attention, seq_len=seq_len,
                                                sequence_parallel=sequence_parallel,
                                                norm_bytes=norm_bytes)
    if stage == pp - 1:
        s = seq_len or spec.seq_len
        # the final norm's input (norm_bytes for RMSNorm) and the head input; RMSNorm also
        # saves its normalised tensor (see activation_bytes_per_layer)
        inputs = 2 if spec.rms_norm else 1
        saved += ((saved_norm_input_bytes(spec, act_bytes, norm_bytes) + inputs * act_bytes)
                  * s * micro_batch * spec.hidden)
        saved += logits_saved_bytes(spec, micro_batch, tp, seq_len)
    return saved


def transient_activation_bytes(spec: ModelSpec, *, stage: int, pp: int, micro_batch: int, tp: int,
                               recompute: str, act_bytes: int, flash_attention: bool = True,
                               seq_len: int | None = None, sequence_parallel: bool = False,
                               norm_bytes: int | None = None) -> float:
    """Activation memory beyond the saved tensors at a stage's peak, once (not per micro-batch in
    flight): with full recompute, the block being recomputed in backward holds its full activations;
    on the last stage, the logits in the compute dtype and their fp32 gradient in backward."""
    extra = 0.0
    if recompute == "full":
        extra += activation_bytes_per_layer(spec, micro_batch, tp, "none", act_bytes,
                                            flash_attention, seq_len=seq_len,
                                            sequence_parallel=sequence_parallel,
                                            norm_bytes=norm_bytes)
    if stage == pp - 1:
        extra += (logits_bytes(spec, micro_batch, tp, act_bytes, seq_len)
                  - logits_saved_bytes(spec, micro_batch, tp, seq_len))
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


def stage_params(spec: ModelSpec, stage: int, pp: int, tp: int, blocks: int, ep: int = 1) -> float:
    """Parameters held by one GPU of `stage` (TP slice; the embedding on the first stage, the head
    on the last; with tied embeddings and p > 1 the last stage holds its own copy; with expert
    parallelism E/ep of the routed experts, topology/experts.py)."""
    params = blocks * layer_params(spec, tp).total
    if ep > 1:
        params -= expert_params_held(spec, blocks, tp, 1) - expert_params_held(spec, blocks, tp, ep)
    if stage == 0:
        params += embedding_params(spec, tp)
    if stage == pp - 1:
        params += head_params(spec, tp, separate_stage=pp > 1)
    return params


def zero3_live_parameter_bytes(stage_params_count: float, largest_layer_params: float,
                               precision: Precision) -> float:
    """ZeRO-3's gathered (whole) parameters at the peak: DeepSpeed keeps up to
    stage3_max_live_parameters gathered, and at least the module running plus the prefetch bucket
    (stage3_prefetch_bucket_size) gathered ahead of it; never more than the rank's whole model.
    Persistent parameters (at most stage3_param_persistence_threshold elements each: norms, biases)
    stay gathered too; they are among the stage's parameters. DeepSpeed's own estimator counts
    4 x the largest layer (estimate_zero3_model_states_mem_needs' largest_layer_memory)."""
    live = max(ZERO3_MAX_LIVE_PARAMETERS, largest_layer_params + ZERO3_PREFETCH_ELEMENTS)
    return min(stage_params_count, live) * precision.weight_bytes


def buffer_bytes(stage_params_count: float, zero_stage: int, precision: Precision, dp: int,
                 largest_layer_params: float = 0.0) -> float:
    """DeepSpeed's communication buckets for the ZeRO stage (sizes as `plan --emit` writes them);
    none on BF16_Optimizer's path (see Precision.bf16_optimizer). ZeRO-2/3's reduce bucket is
    counted with the gradients (zero_gradient_bytes); ZeRO-2 keeps the all-gather bucket, ZeRO-3 the
    gathered parameters (zero3_live_parameter_bytes)."""
    if dp == 1 and zero_stage == 0 or precision.bf16_optimizer and zero_stage <= 1:
        return 0.0
    if zero_stage == 3:
        return zero3_live_parameter_bytes(stage_params_count, largest_layer_params, precision)
    if zero_stage == 2:
        return min(stage_params_count, ALLGATHER_BUCKET_ELEMENTS) * precision.weight_bytes
    if zero_stage == 1:
        return (min(stage_params_count, REDUCE_BUCKET_ELEMENTS) * precision.grad_bytes
                + min(stage_params_count, ALLGATHER_BUCKET_ELEMENTS) * precision.weight_bytes)
    return 0.0


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one GPU of one pipeline stage."""

    stage: int
    blocks: int
    params: float
    weights: float
    gradients: float
    optimizer: float
    activations: float
    buffers: float
    overhead: float = 0.0
    """The part of `buffers` that is no tensor: the fragmentation allowance and the framework's
    memory outside the caching allocator."""
    expert_params: float = 0.0
    """Of `params`, the routed experts' (MoE): their states shard over dp/ep, not dp."""

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.buffers

    @property
    def allocated(self) -> float:
        """Bytes in tensors at the peak: what torch.cuda.max_memory_allocated() reports."""
        return self.total - self.overhead

    def to_gib(self) -> dict:
        keys = ("weights", "gradients", "optimizer", "activations", "buffers")
        out = {k: getattr(self, k) / GIB for k in keys}
        out["total"] = self.total / GIB
        return out


def stage_memory(spec: ModelSpec, *, stage: int, blocks: int, dp: int, pp: int, tp: int,
                 micro_batch: int, micro_batches: int, zero_stage: int, recompute: str,
                 precision: Precision, framework_bytes: float, flash_attention: bool = True,
                 seq_len: int | None = None, sequence_parallel: bool = False,
                 virtual_stages: int = 1, ep: int = 1, offload: str = "none") -> StageMemory:
    """Everything one GPU of `stage` holds at its peak (during the 1F1B steady state). An MoE
    model's routed experts (E/ep of them) have their states sharded over dp/ep (experts.py)."""
    params = stage_params(spec, stage, pp, tp, blocks, ep)
    expert = expert_params_held(spec, blocks, tp, ep)
    states = deepspeed_model_state_bytes(params - expert, dp, zero_stage, precision, offload)
    if expert:
        expert_states = deepspeed_model_state_bytes(expert, expert_data_parallel(dp, ep), zero_stage,
                                                    precision, offload)
        states = {key: value + expert_states[key] for key, value in states.items()}
    act = precision.activation_bytes
    in_flight = micro_batches_in_flight(stage, pp, micro_batches, virtual_stages)
    # saved tensors of every micro-batch in flight (the last stage has one), then what exists once:
    # the block being recomputed (full recompute), the logits and their gradient (last stage)
    activations = in_flight * saved_activation_bytes(
        spec, stage=stage, pp=pp, blocks=blocks, micro_batch=micro_batch, tp=tp, recompute=recompute,
        act_bytes=act, flash_attention=flash_attention, seq_len=seq_len,
        sequence_parallel=sequence_parallel, norm_bytes=precision.norm_bytes)
    activations += transient_activation_bytes(
        spec, stage=stage, pp=pp, micro_batch=micro_batch, tp=tp, recompute=recompute, act_bytes=act,
        flash_attention=flash_attention, seq_len=seq_len, sequence_parallel=sequence_parallel,
        norm_bytes=precision.norm_bytes)
    largest = 0.0
    if zero_stage == 3:   # the largest module ZeRO-3 gathers whole: a block, the embedding or head
        largest = max(layer_params(spec, tp).total,
                      embedding_params(spec, tp) if stage == 0 else 0,
                      head_params(spec, tp, separate_stage=pp > 1) if stage == pp - 1 else 0)
    buffers = buffer_bytes(params, zero_stage, precision, dp, largest)
    allocated = sum(states.values()) + activations + buffers
    overhead = FRAGMENTATION_FRACTION * allocated + framework_bytes
    return StageMemory(stage=stage, blocks=blocks, params=params, activations=activations,
                       buffers=buffers + overhead, overhead=overhead, expert_params=expert, **states)


def pipeline_memory(spec: ModelSpec, *, dp: int, pp: int, tp: int, micro_batch: int,
                    micro_batches: int, zero_stage: int, recompute: str, precision: Precision,
                    framework_bytes: float, flash_attention: bool = True,
                    seq_len: int | None = None, sequence_parallel: bool = False,
                    virtual_stages: int = 1, ep: int = 1, offload: str = "none") -> list[StageMemory]:
    """Memory of every pipeline stage, with the same block split the model builds."""
    split = split_stages(spec, pp, tp)
    return [stage_memory(spec, stage=i, blocks=blocks, dp=dp, pp=pp, tp=tp, micro_batch=micro_batch,
                         micro_batches=micro_batches, zero_stage=zero_stage, recompute=recompute,
                         precision=precision, framework_bytes=framework_bytes,
                         flash_attention=flash_attention, seq_len=seq_len,
                         sequence_parallel=sequence_parallel, virtual_stages=virtual_stages, ep=ep,
                         offload=offload)
            for i, blocks in enumerate(split)]
