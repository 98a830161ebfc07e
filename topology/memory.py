"""Memory per GPU: model states under ZeRO, activations per layer and per pipeline stage, buffers.

Symbols: s sequence length, b micro-batch, h hidden, a heads, a_kv KV heads, f ffn hidden,
t tensor-parallel degree, p pipeline stages, m micro-batches per step, d data-parallel degree,
Psi parameters held by one GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass

from .activations import (FP32_BYTES, activation_bytes_per_layer, logits_bytes,  # noqa: F401
                          logits_saved_bytes, micro_batches_in_flight, mlp_activation_elements,
                          saved_activation_bytes, saved_norm_input_bytes,
                          transient_activation_bytes)
from .engines import DEFAULT_ENGINE, ENGINES, Engine
from .experts import (block_params_held, dispatch_buffer_bytes, expert_data_parallel,
                      expert_params_held)
from .fp8 import FP8_BYTES, fp8_weight_copy_bytes
from .frozen_hash import cached_hash
from .model_spec import ModelSpec
from .optimizer_states import adafactor_stage_elements, state_bytes_per_parameter
from .params import dense_layer_params, embedding_params, head_params, layer_params
from .stage_split import split_stages

GIB = 1024 ** 3

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

    lp_weight_bytes: int = 0
    """Bytes per element of the weights the GEMMs read and the data-parallel gathers move, when the
    stored weights are wider (FSDP keeps fp32 parameters and gathers bf16 copies); 0: weight_bytes."""
    fp8: bool = False
    """The block's linear layers run as FP8 GEMMs (fp8.py), everything else in bf16."""
    optimizer: str = "adamw"
    """train.optimizer (optimizer_states.py): optimizer_bytes counts AdamW's two fp32 moments;
    Lion keeps one, Adafactor none per element (its factored moments are counted per stage)."""

    @property
    def optimizer_state_bytes(self) -> int:
        """optimizer_bytes for this precision's optimizer: the master copy (if any) and the
        elementwise moments (AdamW 8, Lion 4, Adafactor 0 bytes per parameter)."""
        if self.optimizer == "adamw":
            return self.optimizer_bytes
        moments = 0 if self.optimizer == "adafactor" else state_bytes_per_parameter(self.optimizer)
        return self.optimizer_bytes - state_bytes_per_parameter("adamw") + moments

    def __hash__(self) -> int:
        return cached_hash(self)

    @property
    def norm_bytes(self) -> int:
        return self.norm_input_bytes or self.activation_bytes

    @property
    def compute_weight_bytes(self) -> int:
        """Bytes per weight element the step reads and the gathers move."""
        return self.lp_weight_bytes or self.weight_bytes


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
    # Megatron-Core as NeMo / Megatron-Bridge's perf recipes run it: bf16 weights and a bf16 main-
    # gradient buffer (`grad_reduce_in_fp32 = False`, perf_recipes/_common.py), fp32 master weights
    # and Adam m, v in the (distributed) optimizer.
    "bf16-mcore": Precision(weight_bytes=2, grad_bytes=2, optimizer_bytes=12, activation_bytes=2),
    # FSDP2 with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32) (torchtitan): fp32
    # parameters and gradients, Adam m and v, sharded; the forward and backward gather bf16 copies.
    "bf16-fsdp": Precision(weight_bytes=4, grad_bytes=4, optimizer_bytes=8, activation_bytes=2,
                           lp_weight_bytes=2),
    # plain fp32 AdamW (CPU runs): no master copy, Adam m and v. Under ZeRO >= 1,
    # DeepSpeedZeroOptimizer clones this rank's partition of the weights into an fp32 master
    # (single_partition_of_fp32_groups, runtime/zero/stage_1_and_2.py) even when the weights are
    # already fp32, so the optimizer holds 4 + 8 bytes per parameter / dp: measured by
    # `llmlaunch validate` on CPU (docs/validation.md).
    "fp32": Precision(weight_bytes=4, grad_bytes=4, optimizer_bytes=8, activation_bytes=4,
                      zero_master_bytes=4),
}


PRECISION_CHOICES = ("bf16", "fp8", "fp32")
"""What `plan --precision` offers: fp8 is bf16 with FP8 GEMMs (fp8.py)."""


@functools.lru_cache(maxsize=64)
def precision_for(name: str, engine: Engine) -> Precision:
    """The Precision of a plan: 'bf16' and 'fp8' take the engine's bf16 accounting of the model
    states (Engine.model_states), 'fp8' with its linear layers' GEMMs in FP8; any key of PRECISIONS
    as it is (fp32; the published runs' bf16-megatron)."""
    if name in ("bf16", "fp8"):
        base = PRECISIONS[engine.model_states]
        return dataclasses.replace(base, fp8=True) if name == "fp8" else base
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not one of {', '.join(PRECISION_CHOICES)}")
    return PRECISIONS[name]


def model_state_bytes(params: float, dp: int, zero_stage: int, precision: Precision) -> dict:
    """Weights, gradients and optimizer states of `params` parameters on one GPU under ZeRO.

    Rajbhandari et al. 2020 (ZeRO), Section 5 / Figure 1: stage 1 (P_os) divides the optimizer
    states by N_d, stage 2 (P_os+g) also the gradients, stage 3 (P_os+g+p) also the weights.
    Under ZeRO the optimizer also holds the precision's zero_master_bytes (DeepSpeed's fp32 master
    partition of an fp32 model; 0 for the paper's mixed precision, whose K = 12 includes it).
    """
    master = precision.zero_master_bytes if zero_stage >= 1 else 0
    optimizer_bytes = precision.optimizer_state_bytes + master
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
        "optimizer": 0.0 if offload != "none" else params * (precision.optimizer_state_bytes + master) / dp,
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


def dense_blocks_in(spec: ModelSpec, first_block: int, blocks: int) -> int:
    """Of `blocks` blocks from `first_block` on, how many are an MoE model's first dense layers
    (DeepSeek's first_k_dense_replace); 0 for a dense model, whose blocks are all alike."""
    if not spec.moe:
        return 0
    return max(0, min(first_block + blocks, spec.dense_layers) - first_block)


@functools.lru_cache(maxsize=4096)
def stage_params(spec: ModelSpec, stage: int, pp: int, tp: int, blocks: int, ep: int = 1,
                 first_block: int = 0) -> float:
    """Parameters held by one GPU of `stage` (TP slice; the embedding on the first stage, the head
    on the last; with tied embeddings and p > 1 the last stage holds its own copy; with expert
    parallelism E/ep of the routed experts, topology/experts.py). An MoE model's first dense
    layers (from `first_block`, the stage's first block index) are counted as the dense blocks
    they are."""
    dense = dense_blocks_in(spec, first_block, blocks)
    moe = blocks - dense
    params = moe * layer_params(spec, tp).total + dense * dense_layer_params(spec, tp).total
    if ep > 1:
        params -= expert_params_held(spec, moe, tp, 1) - expert_params_held(spec, moe, tp, ep)
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

    @classmethod
    def of(cls, **fields) -> "StageMemory":
        """The record from every field by name, without the frozen __init__'s per-field
        object.__setattr__ (a search builds one per stage of every layout it sizes: 30,000 for a
        1024-GPU DeepSeek-V3 plan). Still frozen afterwards; equal to StageMemory(**fields)."""
        if fields.keys() != cls.__dataclass_fields__.keys():
            raise TypeError(f"StageMemory.of needs exactly {', '.join(cls.__dataclass_fields__)}")
        record = object.__new__(cls)
        record.__dict__.update(fields)
        return record

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


def fsdp_unsharded_bytes(stage_params_count: float, block_params: float, root_params: float,
                         head_params_count: float, zero_stage: int, pp: int,
                         precision: Precision, pipeline_no_sync: bool = False,
                         fp8_linear: tuple[float, float] = (0.0, 0.0),
                         sharded_gradients: float = 0.0) -> float:
    """FSDP's gathered compute copies at the stage's activation peak (the start of the backward),
    lp = the compute dtype's bytes. FULL_SHARD without a pipeline (torchtitan's reshard_after_forward:
    one unit per block, the root unit holding the embedding, final norm and head): the block running
    and the one prefetched (2 blocks), the root unit, gathered for the whole forward and again for
    the whole backward, and the head's unsharded gradient, kept until the root's reduce-scatter at
    the end of the backward: lp (2 blocks + root + head). SHARD_GRAD_OP, or FULL_SHARD under a
    pipeline (torchtitan keeps the weights gathered between the micro-batches: no
    reshard_after_forward), keeps the stage's whole compute copy plus one block's unsharded
    gradient: lp (stage + block). Megatron-FSDP is priced the same way.

    pipeline_no_sync (torch.distributed.pipelining over FSDP2: torchtitan's 3D and 4D runs): the
    schedule runs every micro-batch's backward but the last with set_requires_gradient_sync(False)
    and set_reshard_after_backward(False) (pipelining/stage.py, backward_maybe_with_nosync), so
    FSDP2 keeps each parameter's gradient unsharded across the micro-batches, upcast to the reduce
    dtype (fully_shard/_fsdp_param.py: to_accumulated_grad_if_needed,
    accumulate_unsharded_grad_if_needed): the stage's whole gradient in grad_bytes (fp32 under
    MixedPrecisionPolicy(bf16, fp32)) until the last micro-batch reduce-scatters it. It takes the
    place of the sharded gradients (`sharded_gradients`, bytes, counted with the model states),
    which exist only after that reduce-scatter: only the excess is added here.

    fp8_linear = (of a block, of the stage) the linear layers' parameters gathered in FP8 (torchao's
    Float8 all-gather: 1 byte each in the gathered copy instead of lp; gradients stay lp)."""
    lp = precision.compute_weight_bytes
    block_fp8, stage_fp8 = fp8_linear
    if zero_stage == 3 and pp == 1:
        return (lp * (2 * block_params + root_params + head_params_count)
                - 2 * (lp - FP8_BYTES) * block_fp8)
    if zero_stage >= 2:
        accumulated = (max(0.0, precision.grad_bytes * stage_params_count - sharded_gradients)
                       if pipeline_no_sync and pp > 1 else 0.0)
        return (lp * (stage_params_count + block_params) - (lp - FP8_BYTES) * stage_fp8
                + accumulated)
    return 0.0


def stage_memory(spec: ModelSpec, *, stage: int, blocks: int, dp: int, pp: int, tp: int,
                 micro_batch: int, micro_batches: int, zero_stage: int, recompute: str,
                 precision: Precision, framework_bytes: float, flash_attention: bool = True,
                 seq_len: int | None = None, sequence_parallel: bool = False,
                 virtual_stages: int = 1, ep: int = 1, offload: str = "none",
                 engine: Engine = ENGINES[DEFAULT_ENGINE], cp: int = 1,
                 first_block: int = 0) -> StageMemory:
    """Everything one GPU of `stage` holds at its peak (during the 1F1B steady state), under the
    engine that runs it (its activation rules, its accounting of sharded states and buffers). An
    MoE model's routed experts (E/ep of them) have their states sharded over dp/ep (experts.py).
    Context parallelism (cp ranks per sequence) splits the activations cp-fold, and ZeRO, the
    distributed optimizer and FSDP shard over the dp x cp ranks that hold the same weights (the
    data-parallel group Megatron-Core, torchtitan and DeepSpeed-Ulysses reduce gradients over)."""
    fixed = _stage_fixed(spec, stage == 0, stage == pp - 1, blocks,
                         dense_blocks_in(spec, first_block, blocks), dp, pp, tp, micro_batch,
                         zero_stage, recompute, precision, flash_attention, seq_len,
                         sequence_parallel, ep, offload, engine, cp)
    return _stage_from_fixed(fixed, stage=stage, blocks=blocks, pp=pp, micro_batches=micro_batches,
                             virtual_stages=virtual_stages, framework_bytes=framework_bytes)


def _stage_from_fixed(fixed: tuple, *, stage: int, blocks: int, pp: int, micro_batches: int,
                      virtual_stages: int, framework_bytes: float) -> StageMemory:
    """A stage's memory from what _stage_fixed gives for its kind: the saved tensors of every
    micro-batch in flight (the last stage has one), then what exists once: the block being
    recomputed (full recompute), the logits and their gradient (last stage)."""
    params, expert, states, buffers, saved, transient = fixed
    activations = micro_batches_in_flight(stage, pp, micro_batches, virtual_stages) * saved + transient
    allocated = sum(states.values()) + activations + buffers
    overhead = FRAGMENTATION_FRACTION * allocated + framework_bytes
    return StageMemory.of(stage=stage, blocks=blocks, params=params, **states,
                          activations=activations, buffers=buffers + overhead, overhead=overhead,
                          expert_params=expert)


@functools.lru_cache(maxsize=8192)
def _stage_fixed(spec: ModelSpec, first: bool, last: bool, blocks: int, dense: int, dp: int,
                 pp: int, tp: int, micro_batch: int, zero_stage: int, recompute: str,
                 precision: Precision, flash_attention: bool, seq_len: int | None,
                 sequence_parallel: bool, ep: int, offload: str, engine: Engine,
                 cp: int) -> tuple:
    """What stage_memory needs that does not depend on the micro-batches in flight: (parameters,
    routed-expert parameters, model states {weights, gradients, optimizer}, buffers, one
    micro-batch's saved activations, the transient activations), for a stage of `blocks` blocks,
    `dense` of them an MoE model's first dense layers, first and/or last in the pipeline. The
    middle stages of a deep pipeline share it."""
    stage = 0 if first else (pp - 1 if last else 1)
    # a first block index giving the same `dense` count (all stage_params reads of it)
    first_block = spec.dense_layers - dense if spec.moe else 0
    params = stage_params(spec, stage, pp, tp, blocks, ep, first_block)
    moe_blocks = blocks - dense
    expert = expert_params_held(spec, moe_blocks, tp, ep)
    shard, expert_shard = dp * cp, expert_data_parallel(dp, ep) * cp
    states_of = (deepspeed_model_state_bytes if engine.zero_accounting == "deepspeed" else
                 lambda p, n, z, prec, off: model_state_bytes(p, n, z, prec))
    states = states_of(params - expert, shard, zero_stage, precision, offload)
    if expert:
        expert_states = states_of(expert, expert_shard, zero_stage, precision, offload)
        states = {key: value + expert_states[key] for key, value in states.items()}
    if precision.optimizer == "adafactor":    # factored moments (ZeRO-0 only: optimizer_states.py)
        states["optimizer"] += FP32_BYTES * adafactor_stage_elements(
            spec, tp=tp, blocks=blocks, first=first, last=last, pp=pp)
    if precision.fp8 and engine.fp8 != "torchao":   # Transformer Engine's FP8 weight copies
        states["weights"] += fp8_weight_copy_bytes(linear_params_held(spec, tp, blocks, moe_blocks, ep),
                                                   engine.fp8)
    act = precision.activation_bytes
    rules = dict(flash_attention=flash_attention, seq_len=seq_len, sequence_parallel=sequence_parallel,
                 norm_bytes=precision.norm_bytes, policy=engine.activations, cp=cp,
                 fp8=precision.fp8 and engine.fp8 != "torchao")
    saved = saved_activation_bytes(spec, stage=stage, pp=pp, blocks=blocks, micro_batch=micro_batch,
                                   tp=tp, recompute=recompute, act_bytes=act, **rules)
    transient = transient_activation_bytes(
        spec, stage=stage, pp=pp, micro_batch=micro_batch, tp=tp, recompute=recompute, act_bytes=act,
        logits_per_element=engine.logits_bytes, **rules)
    transient += dispatch_buffer_bytes(spec, moe_blocks, ep, micro_batch, seq_len, cp, act)
    block = block_params_held(spec, tp, ep)     # what ZeRO-3 and FSDP gather at once
    if engine.zero_accounting == "deepspeed":
        largest = 0.0
        if zero_stage == 3:   # the largest module ZeRO-3 gathers whole: a block, the embedding or head
            largest = max(block, embedding_params(spec, tp) if first else 0,
                          head_params(spec, tp, separate_stage=pp > 1) if last else 0)
        buffers = buffer_bytes(params, zero_stage, precision, shard, largest)
    else:
        head = head_params(spec, tp, separate_stage=pp > 1) if last else 0
        root = (embedding_params(spec, tp) if first else 0) + head
        fp8_linear = ((linear_params_held(spec, tp, 1, 1, ep),
                       linear_params_held(spec, tp, blocks, moe_blocks, ep))
                      if precision.fp8 and engine.fsdp_fp8_all_gather else (0.0, 0.0))
        buffers = fsdp_unsharded_bytes(params, block, root, head, zero_stage, pp, precision,
                                       pipeline_no_sync=engine.dp_overlap == "fsdp",
                                       fp8_linear=fp8_linear, sharded_gradients=states["gradients"])
    return params, expert, states, buffers, saved, transient


@functools.lru_cache(maxsize=4096)
def linear_params_held(spec: ModelSpec, tp: int, blocks: int, moe_blocks: int, ep: int) -> float:
    """Parameters of the linear layers one GPU holds for `blocks` blocks (their TP-split matrices:
    what FP8 GEMMs read), the routed experts E/ep."""
    dense = blocks - moe_blocks
    held = moe_blocks * layer_params(spec, tp).sharded + dense * dense_layer_params(spec, tp).sharded
    return held - (expert_params_held(spec, moe_blocks, tp, 1) - expert_params_held(spec, moe_blocks, tp, ep))


def pipeline_memory(spec: ModelSpec, *, dp: int, pp: int, tp: int, micro_batch: int,
                    micro_batches: int, zero_stage: int, recompute: str, precision: Precision,
                    framework_bytes: float, flash_attention: bool = True,
                    seq_len: int | None = None, sequence_parallel: bool = False,
                    virtual_stages: int = 1, ep: int = 1, offload: str = "none",
                    engine: Engine = ENGINES[DEFAULT_ENGINE], cp: int = 1) -> list[StageMemory]:
    """Memory of every pipeline stage, with the same block split the model builds (the middle
    stages of a deep pipeline are alike but for their micro-batches in flight: each kind's fixed
    part is looked up once)."""
    split = split_stages(spec, pp, tp)
    firsts = itertools.accumulate(split[:-1], initial=0)
    kinds: dict = {}
    out = []
    for i, (blocks, first) in enumerate(zip(split, firsts)):
        key = (i == 0, i == pp - 1, blocks, dense_blocks_in(spec, first, blocks))
        if key not in kinds:
            kinds[key] = _stage_fixed(spec, *key, dp, pp, tp, micro_batch, zero_stage, recompute,
                                      precision, flash_attention, seq_len, sequence_parallel, ep,
                                      offload, engine, cp)
        out.append(_stage_from_fixed(kinds[key], stage=i, blocks=blocks, pp=pp,
                                     micro_batches=micro_batches, virtual_stages=virtual_stages,
                                     framework_bytes=framework_bytes))
    return out
