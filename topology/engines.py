"""The training engines a step is priced for: what each does besides the model's arithmetic.

The planner plans for `deepspeed` (what `llmlaunch train` runs); the published runs each name the
engine that ran them (topology/data/published_runs.yaml), since the same layout costs differently
under each:

- pipeline sends: "blocking" (the stage waits for each send and receive: DeepSpeed's
  PipelineEngine, p2p.send/recv per instruction; Megatron-LM's 1F1B, which waits on its batched
  isend/irecv before computing), "async" (overlapped with compute) or "async-interleaved"
  (Megatron-Core as Megatron-Bridge configures it, training/comm_overlap.py: overlap_p2p_comm on
  with virtual stages, batched blocking sends without).
- scatter/gather (Narayanan et al. 2021, §4.1): each of the t tensor ranks of a stage sends 1/t of
  the activation across nodes and the receiving stage all-gathers it over NVLink. Megatron-LM only.
- tp_backward_overlap: the column-parallel layers' backward collectives overlap their GEMMs: the
  input-gradient all-reduce (reduce-scatter with SP) runs during the weight-gradient GEMM, and under
  SP the input's all-gather is re-run during the input-gradient GEMM (Megatron-LM's
  LinearWithGradAccumulationAndAsyncCommunication, megatron/mpu/layers.py, 2022; absent from the
  2021 code of Narayanan et al.).
- kernels: the memory-bound kernel set (topology/kernels.py: Megatron-LM's 2021 kernels, which
  Megatron-DeepSpeed and metaseq (metaseq/modules/apex/layer_norm_cuda_kernel.cu) share, its 2022
  ones with the persistent LayerNorm, the generic fused set, or model/'s eager ops); dropout: the
  recipe's dropout (0.1 on the embeddings, the attention probabilities and after attention and MLP
  in GPT-3-era runs; none in llmlaunch's model and in Llama 3).
- instruction_us, step_overhead_us: DeepSpeed's PipelineEngine interprets a schedule of
  instructions (LoadMicroBatch, ForwardPass, BackwardPass, Send/RecvActivation, Send/RecvGrad) in
  Python, `instructions_per_micro_batch` of them, and ends each step with its own bookkeeping. Both
  are host time, measured on this project's host by benchmarks/pipe_overhead.py (DeepSpeed 0.19.8,
  torch 2.13 CPU, 2-core VM, one rank, 8x8 layers so the device time is nil): beyond the same
  forward/backward/Adam loop without the engine, medians of six runs 96 us per instruction (72 to
  146) and 1.2 ms per step (0.7 to 2.6; the VM's load was 3 to 6 on 2 cores). On a GPU the
  per-instruction time overlaps the device like any host time; the step's is serial.

Today's stacks (issue 23), each read off its own code:
- `megatron-core` (NVIDIA Megatron-Core 0.20, megatron/core/distributed/, as NeMo / Megatron-Bridge
  run it): `--overlap-grad-reduce` reduces (reduce-scatters, with the distributed optimizer) each
  gradient bucket of max(40M, 1M x dp) parameters (distributed_data_parallel_config.py,
  `bucket_size`) as soon as the last micro-batch's backward has produced it, and
  `--overlap-param-gather` all-gathers the updated weights bucket by bucket ahead of the next step's
  forward (param_and_grad_buffer.py): only what the backward (forward) cannot hide shows
  (dp_time.py). The distributed optimizer (optimizer/distrib_optimizer.py) is ZeRO-1: fp32 main
  gradients in one buffer, master weights and Adam states sharded over the data-parallel (x
  context-parallel) ranks. Tensor-parallel communication overlap (Transformer Engine's
  userbuffers, the per-GEMM configurations of Megatron-Bridge's training/comm_overlap.py: ring
  exchange for the all-gathers, pipelined reduce-scatters on 16-24 SMs, bulk overlaps of 2-24 SMs
  in backward) runs every TP collective beside the GEMM it feeds. Kernels: Transformer Engine's
  fused norm, RoPE and SwiGLU, cuDNN's fused attention; activations as Korthikanti et al. count
  them for fused kernels (activations.py); context parallelism through Transformer Engine's ring
  (its KV exchange overlaps the attention of the chunk before). FP8 through Transformer Engine.
- `fsdp` (PyTorch FSDP2 as torchtitan runs it: torchtitan/parallelisms/parallelize_llama.py,
  commit 9dec370, 2024-12; Composer's FSDP for llm-foundry): every transformer block is one FSDP
  unit; its bf16 weights are all-gathered before its forward and again before its backward
  (reshard_after_forward; not under a pipeline) with the next unit's gather prefetched, and its
  gradients reduce-scattered in fp32 (MixedPrecisionPolicy(param_dtype=bf16,
  reduce_dtype=fp32)) while the backward goes on (dp_time.py). fp32 parameters, gradients and
  Adam states sharded: 16 bytes a parameter over the shard group. Eager kernels (torchtitan's
  RMSNorm upcasts, no fusion) unless compiled; SDPA's flash kernel (FlashAttention-2); per-op
  selective checkpointing (activations.py); FP8 through torchao's Float8Linear.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .frozen_hash import cached_hash

DEEPSPEED_INSTRUCTION_US = 96.0
DEEPSPEED_STEP_OVERHEAD_US = 1200.0
# DeepSpeed's BF16_Optimizer (runtime/bf16_optimizer.py): each micro-batch `_update_hp_grad` runs
# hp_grad.add_(lp.grad.to(fp32)) and lp.grad.zero_(): read 2 + write 4 (the cast), read 4 + 4 and
# write 4 (the add), write 2 (the zero) = 20 bytes a parameter. Its step: the norm (read 4), Adam,
# update_lp_params (read 4, write 2), clear_hp_grads (write 4): 12 beyond AdamW's 30. It reduces the
# fp32 gradients (4 bytes).
BF16_OPTIMIZER_ACCUMULATION_BYTES = 20
BF16_OPTIMIZER_EXTRA_BYTES = 12
# Megatron-LM's local DDP (megatron/model/distributed.py, 2021) adds each micro-batch's fp16 grad
# into the fp16 main_grad buffer: read 2, read 2, write 2 = 6 bytes (fp32 accumulation is only the
# default for bf16). Its Float16OptimizerWithFloat16Params.step (megatron/optimizer/optimizer.py):
# copy grads to fp32 (2 + 4), unscale and check for inf (4 + 4), the norm for clipping (4), Adam,
# copy the fp32 weights to the fp16 model (4, the write of 2 counted in AdamW's), zero the buffer
# (2): 24 beyond AdamW's 30. Gradients are all-reduced in fp16 (2 bytes). Megatron-LM 2022
# (megatron/mpu/layers.py, megatron/arguments.py) fuses the accumulation into the weight-gradient
# GEMM (apex fused_dense wgrad_gemm_accum_fp32) only with fp32 accumulation: arguments.py switches
# --gradient-accumulation-fusion off otherwise, so an fp16 run keeps the 6-byte add; fused, the
# GEMM's epilogue reads and writes the fp32 main_grad (4 + 4) where the GEMM model counts a 2-byte
# write: 6 more bytes either way.
# DeepSpeed's ZeRO-2 and ZeRO-3 (plain engine) run Python per parameter tensor every micro-batch:
# ZeRO-2's gradient hooks copy each gradient into the reduce bucket and reduce it; ZeRO-3 also
# gathers, releases and re-partitions every module's parameters around its forward and backward.
# Host time per parameter tensor per micro-batch beyond ZeRO-0's, measured by
# benchmarks/zero_overhead.py (2026-12-06, DeepSpeed 0.19.8, torch 2.13 CPU, one rank, this
# project's 2-core VM under a load of 3 to 5; Linear(320, 320) stacks of 8 and 48 layers, 4
# micro-batches, the fastest of 15 steps each): medians of three runs 218 us (ZeRO-2; 151 to 331)
# and 323 us (ZeRO-3; 288 to 454).
DEEPSPEED_ZERO2_TENSOR_US = 218.0
DEEPSPEED_ZERO3_TENSOR_US = 323.0
MEGATRON_FP16_ACCUMULATION_BYTES = 6
MEGATRON_OPTIMIZER_EXTRA_BYTES = 24
# Megatron-Core (0.20) fuses each micro-batch's gradient accumulation into the weight-gradient
# GEMM (gradient_accumulation_fusion: the epilogue reads and writes the main_grad buffer, bf16 in
# the perf recipes' grad_reduce_in_fp32 = False): 2 more bytes a parameter than the GEMM's own
# write. Its distributed optimizer's step beyond AdamW: the bf16 gradient shard copied to fp32
# (read 2, write 4), the norm for clipping (read 4), the buffer zeroed (write 2).
MCORE_ACCUMULATION_BYTES = 2
MCORE_OPTIMIZER_EXTRA_BYTES = 12


@dataclass(frozen=True)
class Engine:
    name: str
    kernels: str
    dropout: bool
    pipeline_sends: str = "blocking"
    scatter_gather: bool = False
    tp_backward_overlap: bool = False
    instruction_us: float = 0.0
    """Host time per pipeline instruction (DeepSpeed's schedule interpreter), beyond the model's ops."""
    step_overhead_us: float = 0.0
    """Host time per step the engine spends besides the micro-batches (its step-end bookkeeping)."""
    grad_accumulation_bytes: float = 0.0
    """Bytes per local parameter each micro-batch's gradient accumulation moves beyond the
    weight-gradient GEMM's own write of its result (0: nothing stated)."""
    optimizer_extra_bytes: float = 0.0
    """Bytes per local parameter the optimizer step moves beyond AdamW's own (step_time.py):
    gradient copies, unscaling, the norm for clipping, the low-precision copy, zeroing."""
    dp_grad_bytes: int = 0
    """Bytes per gradient element the data-parallel reduction sends (0: the precision's)."""
    zero_tensor_us: tuple = ()
    """((ZeRO stage, host us per parameter tensor per micro-batch), ...): what the engine's ZeRO
    stages cost the host beyond its plain data parallelism (empty: nothing stated)."""
    score_bias: bool = False
    """The attention scores start from a materialised bias (ALiBi in Megatron-DeepSpeed:
    kernels.block_kernels' score-bias)."""
    attention_kernel: str = "fa2"
    """The fused attention kernel it runs (GpuSpec.attention_efficiency's key: fa2, cudnn, fa3):
    PyTorch's SDPA is FlashAttention-2; Transformer Engine picks cuDNN's."""
    activations: str = "llmlaunch"
    """What a block saves for backward (activations.py): 'llmlaunch' (model/'s eager modules, as
    `validate` measures them), 'fused' (Korthikanti et al.'s terms with fused norms, RoPE and
    SwiGLU: Megatron-Core with Transformer Engine), 'torchtitan' (eager modules under torchtitan's
    per-op selective checkpointing)."""
    dp_overlap: str = "after-flush"
    """How data-parallel traffic meets compute (dp_time.py): 'after-flush' (reduced after the
    pipeline flush; overlapped with the last backward at pp = 1), 'bucketed' (Megatron-Core's
    overlapped buckets), 'fsdp' (FSDP's per-block prefetched gathers and reduce-scatters)."""
    pipeline_zero_stages: tuple = (0, 1)
    """ZeRO stages (or their FSDP equivalents: 2 SHARD_GRAD_OP, 3 FULL_SHARD) the engine runs
    under a pipeline."""
    zero_stages: tuple = (0, 1, 2, 3)
    """ZeRO stages (or FSDP sharding strategies) the engine runs at all; the search tries these."""
    tp_comm_overlap: bool = False
    """Every TP collective runs beside the GEMM it feeds (Transformer Engine's userbuffers;
    PyTorch's async TP)."""
    tp_overlap_on_copy_engines: bool = False
    """The overlapped TP collectives move data with the copy engines, taking no SMs from the GEMM
    (PyTorch's async TP: SymmetricMemory's P2P copies); otherwise they take userbuffers' SMs."""
    sequence_parallel_default: bool = False
    """The search runs tensor parallelism with sequence parallelism (Megatron-Core's recipes do:
    TP > 1 always with SP)."""
    cp_overlap: bool = False
    """The all-gather form of context parallelism exchanges K and V chunk by chunk beside the
    attention of the previous chunk (Transformer Engine's ring); otherwise it is exposed (Llama 3)."""
    fp8: str = ""
    """How FP8 GEMMs run (fp8.py): 'te' (Transformer Engine: FP8 weight copies kept, inputs saved in
    FP8), 'te-fp8-params' (the same with FP8 primary weights: Megatron-Core's fp8_param_gather),
    'torchao' (Float8Linear: weights cast per use); '': the engine has no FP8 path of its own
    (priced as Transformer Engine would run it)."""
    fsdp_fp8_all_gather: bool = False
    """FSDP all-gathers the FP8 linear layers' weights in FP8 (torchao's
    enable_fsdp_float8_all_gather: each rank casts its shard before the gather, 1 byte a parameter
    on the wire and in the gathered copy's place of the bf16 one; dp_time.py, layout_time.py)."""
    logits_bytes: float = 0.0
    """Bytes per logit element the loss holds at its peak (0: the activation bytes + 2 fp32 copies:
    the logits, their fp32 softmax, the fp32 gradient)."""
    model_states: str = "bf16"
    """Which bf16 accounting of weights, gradients and optimizer states it keeps (memory.PRECISIONS):
    'bf16' (DeepSpeed's BF16_Optimizer), 'bf16-megatron' (fp32 main gradients), 'bf16-fsdp' (fp32
    parameters, gradients and Adam states, sharded)."""
    zero_accounting: str = "deepspeed"
    """How sharded states and their buffers are counted (memory.py): 'deepspeed' (DeepSpeed 0.19's
    ZeRO buckets and partitions, measured by `validate`) or 'sharded' (the paper's 16/N split with
    the engine's own gathered copies: Megatron-Core's distributed optimizer, FSDP)."""
    moe_dispatcher: str = "alltoall"
    """How MoE tokens reach their experts (step_time.expert_alltoall_time_s): 'alltoall' (NCCL
    all-to-all of every routed copy: Megatron-Core's alltoall dispatcher, DeepSpeed-MoE) or 'deepep'
    (Megatron-Core's flex dispatcher with DeepEP: a token crosses the network once per node)."""
    runnable: bool = False
    """llmlaunch's `train` runs it (`plan --emit` writes only such layouts)."""
    source: str = ""

    def __hash__(self) -> int:   # a key of the planner's caches, hashed once (frozen_hash.py)
        return cached_hash(self)


_FSDP = Engine(
    "fsdp", kernels="eager", dropout=False, pipeline_sends="blocking",
    attention_kernel="fa2", activations="torchtitan", dp_overlap="fsdp",
    pipeline_zero_stages=(0, 1, 2, 3), zero_stages=(0, 2, 3), fp8="torchao",
    logits_bytes=12.0, model_states="bf16-fsdp", zero_accounting="sharded",
    source="PyTorch FSDP2 as torchtitan runs it (torchtitan/parallelisms/parallelize_llama.py"
           " at 9dec370, 2024-12: one unit per block, reshard_after_forward except under a "
           "pipeline, MixedPrecisionPolicy(bf16, fp32), per-op selective AC); zero_stage 2 is "
           "SHARD_GRAD_OP, 3 FULL_SHARD")

_MCORE = Engine(
    "megatron-core", kernels="megatron", dropout=False, pipeline_sends="async-interleaved",
    tp_backward_overlap=True, grad_accumulation_bytes=MCORE_ACCUMULATION_BYTES,
    optimizer_extra_bytes=MCORE_OPTIMIZER_EXTRA_BYTES, dp_grad_bytes=2,
    attention_kernel="cudnn", activations="fused", dp_overlap="bucketed",
    pipeline_zero_stages=(0, 1), zero_stages=(0, 1, 3), tp_comm_overlap=True, cp_overlap=True,
    sequence_parallel_default=True,
    fp8="te-fp8-params", model_states="bf16-mcore", zero_accounting="sharded",
    source="Megatron-Core 0.20 (NVIDIA/Megatron-LM megatron/core: distributed/"
           "distributed_data_parallel_config.py overlap_grad_reduce, overlap_param_gather, "
           "bucket_size; optimizer/distrib_optimizer.py), Transformer Engine's fused kernels, "
           "cuDNN attention and userbuffers TP overlap as Megatron-Bridge's perf recipes set "
           "them (src/megatron/bridge/training/comm_overlap.py); zero_stage 1 is the "
           "distributed optimizer, 3 Megatron-FSDP")

ENGINES = {
    "deepspeed": Engine(
        "deepspeed", kernels="eager", dropout=False, instruction_us=DEEPSPEED_INSTRUCTION_US,
        step_overhead_us=DEEPSPEED_STEP_OVERHEAD_US,
        grad_accumulation_bytes=BF16_OPTIMIZER_ACCUMULATION_BYTES,
        optimizer_extra_bytes=BF16_OPTIMIZER_EXTRA_BYTES,
        zero_tensor_us=((2, DEEPSPEED_ZERO2_TENSOR_US), (3, DEEPSPEED_ZERO3_TENSOR_US)),
        runnable=True,
        source="DeepSpeed's PipelineEngine (runtime/pipe/engine.py, schedule.py) running model/"),
    "megatron-lm-2021": Engine(
        "megatron-lm-2021", kernels="megatron-2021", dropout=True, scatter_gather=True,
        grad_accumulation_bytes=MEGATRON_FP16_ACCUMULATION_BYTES,
        optimizer_extra_bytes=MEGATRON_OPTIMIZER_EXTRA_BYTES, dp_grad_bytes=2,
        source="Megatron-LM as in Narayanan et al. 2021 (examples/sc21: fused kernels, default "
               "dropout 0.1, scatter/gather on, synchronous tensor-parallel all-reduces)"),
    "megatron-lm-2022": Engine(
        "megatron-lm-2022", kernels="megatron-2022", dropout=True, scatter_gather=True,
        tp_backward_overlap=True, grad_accumulation_bytes=MEGATRON_FP16_ACCUMULATION_BYTES,
        optimizer_extra_bytes=MEGATRON_OPTIMIZER_EXTRA_BYTES, dp_grad_bytes=2,
        source="Megatron-LM with sequence parallelism, Korthikanti et al. 2022 (megatron/mpu/"
               "layers.py: backward collectives overlapped with the GEMMs; SP activations sent "
               "already split, so nothing to scatter)"),
    "megatron-deepspeed": Engine(
        "megatron-deepspeed", kernels="megatron-2021", dropout=True,
        instruction_us=DEEPSPEED_INSTRUCTION_US, step_overhead_us=DEEPSPEED_STEP_OVERHEAD_US,
        grad_accumulation_bytes=BF16_OPTIMIZER_ACCUMULATION_BYTES,
        optimizer_extra_bytes=BF16_OPTIMIZER_EXTRA_BYTES, dp_grad_bytes=4,
        source="Megatron-DeepSpeed (BLOOM, MT-NLG): Megatron's fused kernels under DeepSpeed's "
               "PipelineEngine (blocking sends of the whole activation, no scatter/gather)"),
    "megatron-deepspeed-alibi": Engine(
        "megatron-deepspeed-alibi", kernels="megatron-2021", dropout=True,
        instruction_us=DEEPSPEED_INSTRUCTION_US, step_overhead_us=DEEPSPEED_STEP_OVERHEAD_US,
        grad_accumulation_bytes=BF16_OPTIMIZER_ACCUMULATION_BYTES,
        optimizer_extra_bytes=BF16_OPTIMIZER_EXTRA_BYTES, dp_grad_bytes=4, score_bias=True,
        source="Megatron-DeepSpeed as BLOOM ran it (bigscience-workshop/Megatron-DeepSpeed "
               "megatron/model/transformer.py): as megatron-deepspeed, with ALiBi's bias as the "
               "scores' starting value, torch.baddbmm(alibi, q, k^T, beta=1 or 1/layer)"),
    "metaseq": Engine(
        "metaseq", kernels="megatron-2021", dropout=True,
        source="metaseq (OPT): FSDP with Megatron's tensor-parallel layers and fused kernels"),
    "llama3": Engine(
        "llama3", kernels="megatron", dropout=False, pipeline_sends="async",
        activations="fused", pipeline_zero_stages=(0, 1, 2), model_states="bf16-megatron",
        zero_accounting="sharded",
        source="Llama Team 2024, §3.3.2: asynchronous point-to-point in the pipeline; FSDP "
               "sharding gradients and optimizer states under the pipeline (ZeRO-2); all-gather "
               "context parallelism, exposed; fused attention and the fused kernel set assumed (the "
               "report names no kernels: FlashAttention-2's rate)"),
    "megatron-core": _MCORE,
    "megatron-core-deepep": replace(
        _MCORE, name="megatron-core-deepep", moe_dispatcher="deepep",
        source="megatron-core with --moe-token-dispatcher-type flex --moe-enable-deepep "
               "(megatron/core/transformer/moe/token_dispatcher.py MoEFlexTokenDispatcher, "
               "fused_a2a.py over DeepEP's normal kernels), as Megatron-Bridge's DeepSeek-V3 H100 "
               "recipe runs it (scripts/performance/run_script.py at v0.1.0rc3)"),
    "fsdp": _FSDP,
    "fsdp-compile": replace(
        _FSDP, name="fsdp-compile", kernels="inductor",
        source="torchtitan at 9dec370 with --training.compile: apply_compile compiles each "
               "TransformerBlock (fullgraph) after AC and before FSDP, so TorchInductor fuses its "
               "element-wise ops (kernels.py 'inductor'); the loss stays eager (train.py leaves "
               "torch.compile(loss_fn) commented out): fp32 logits as in `fsdp`"),
    "fsdp-compile-async-tp": replace(
        _FSDP, name="fsdp-compile-async-tp", kernels="inductor", tp_comm_overlap=True,
        tp_overlap_on_copy_engines=True,
        source="as fsdp-compile, with --experimental.enable_async_tensor_parallel (torchtitan "
               "requires compile for it): each sequence-parallel all-gather and reduce-scatter is "
               "decomposed into P2P copies on the copy engines beside the chunks of the matmul it "
               "feeds (PyTorch's async TP: SymmetricMemory; D. Vega-Myhre, 'async TP' 2025-05: "
               "'executed by copy engines ... independently of SMs')"),
    "fsdp-compile-2025": replace(
        _FSDP, name="fsdp-compile-2025", kernels="inductor", logits_bytes=4.0,
        source="torchtitan at e7c0cae (2025-06) with --training.compile: each block compiled as "
               "in fsdp-compile, and the loss too (components/loss.py build_cross_entropy_loss: "
               "torch.compile(loss_fn)), so the fp32 upcast of the logits is fused into the loss "
               "kernel: the bf16 logits and their gradient, 4 bytes a logit"),
    "fsdp-compile-float8-gather": replace(
        _FSDP, name="fsdp-compile-float8-gather", kernels="inductor", logits_bytes=4.0,
        fsdp_fp8_all_gather=True,
        source="as fsdp-compile-2025, with --float8.enable_fsdp_float8_all_gather and "
               "--float8.precompute_float8_dynamic_scale_for_fsdp (torchtitan docs/float8.md: "
               "'cast Float8Linear.weight from high precision to float8 before FSDP all-gather so "
               "we can communicate in float8'; the scales of every weight in one all-reduce per "
               "step), as torchtitan's 2025-06 H200 benchmark runs it; FP8 only for the linear "
               "layers (the embedding and output head gather in bf16)"),
    "llm-foundry": Engine(
        "llm-foundry", kernels="llm-foundry", dropout=False, pipeline_sends="blocking",
        attention_kernel="fa2", activations="fused", dp_overlap="fsdp",
        pipeline_zero_stages=(0, 1, 2, 3), zero_stages=(0, 2, 3), fp8="te",
        logits_bytes=4.0, model_states="bf16-fsdp", zero_accounting="sharded",
        source="MosaicML llm-foundry (scripts/train/benchmarking) on Composer's FSDP: FULL_SHARD or "
               "SHARD_GRAD_OP over the MPT blocks, mixed precision DEFAULT (bf16 compute, fp32 "
               "parameters and reduce), FSDP activation checkpointing of whole blocks, flash "
               "attention, low-precision LayerNorm saving its bf16 input, and flash-attn's fused "
               "cross-entropy (modeling_mpt.py loss_fn 'fused_crossentropy': bf16 logits and their "
               "gradient, 4 bytes a logit)"),
}
DEFAULT_ENGINE = "deepspeed"


def engine(name: str) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"engine {name!r} is unknown; use one of {', '.join(ENGINES)}")
    return ENGINES[name]


def engine_names() -> list[str]:
    """Every engine the planner prices (`plan --engine`), llmlaunch's own first."""
    return list(ENGINES)


def estimate_only_reason(name: str) -> str | None:
    """Why a layout priced for this engine is an estimate llmlaunch cannot emit (None: it runs it)."""
    if engine(name).runnable:
        return None
    return (f"engine {name} is an estimate: llmlaunch trains with DeepSpeed (--engine "
            f"{DEFAULT_ENGINE}); the plan prices what {name} would do with this layout")


def instructions_per_micro_batch(first: bool, last: bool, pp: int) -> int:
    """DeepSpeed TrainSchedule instructions one stage runs per micro-batch: ForwardPass and
    BackwardPass; LoadMicroBatch on the first and last stages (inputs, labels); RecvActivation and
    SendGrad unless first, SendActivation and RecvGrad unless last."""
    count = 2 + (1 if first or last else 0)
    if pp > 1:
        count += (0 if first else 2) + (0 if last else 2)
    return count
