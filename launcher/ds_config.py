"""The DeepSpeed config, derived from run.yaml (never written by hand).

DeepSpeed's traps it encodes:
- train_batch_size must equal micro_batch * grad_accum * DeepSpeed's data-parallel size (it asserts
  it at start-up). Under context parallelism DeepSpeed's data-parallel group is dp x cp (the ranks
  holding the same weights, over which it averages gradients and ZeRO partitions:
  model/parallel_groups.py), each rank a "replica" of micro_batch sequences' chunks, so the number
  written is micro_batch * grad_accum * dp * cp, cp times the sequences a step trains on (run.yaml's
  global batch, micro_batch * grad_accum * dp, is what the data and the schedule count).
- Sequence parallelism under a pipeline: the activation a stage sends is already split along the
  sequence over the TP ranks, so the pipeline engine's own split of it over those ranks (pipeline
  pipe_partitioned / grad_partitioned, on by default with TP, which assume equal copies) is turned
  off.
- The pipeline engine (pp > 1) refuses ZeRO-2/3 (an assertion at engine construction) and offload;
  at pp = 1 the model is a plain module (model/dense.py) and DeepSpeed's plain engine runs ZeRO 0-3,
  with ZeRO-3's prefetch, persistence and live-parameter limits written out (topology/memory.py
  prices the same numbers) and offload to CPU memory (offload_optimizer, offload_param).
- bf16 with a pipeline accumulates gradients in fp32 (data_types.grad_accum_dtype = fp32) so that
  ZeRO-1 runs DeepSpeed's BF16 optimizer, as BLOOM trained: bf16 accumulation over many
  micro-batches loses precision. ZeRO-0 has no such path ("unsupported mix of model_dtype and
  grad_accum_dtype" at start-up): bf16 with ZeRO-0 is refused here, with the fix.
- On a CPU the optimizer is torch's AdamW (`torch_adam`), not DeepSpeed's FusedAdam: the CPU build
  of FusedAdam keeps Adam's bias-correction products beta^t as a running product in a C++ object
  that no checkpoint holds, and recomputes them with pow() after a restart, so a resumed run
  differed from an uninterrupted one in the last bits. torch's AdamW (and the CUDA FusedAdam)
  compute them from the step count, which the checkpoint holds: resume is bit-exact.
- An MoE model under a pipeline with TP sends whole activations between stages (`pipeline`:
  pipe_partitioned and grad_partitioned off): its stages pass the routing carry, whose gradient
  DeepSpeed's partitioned sends cannot carry (model/moe.py).
- No `scheduler` section: the learning-rate schedule is llmlaunch's (launcher/lr_schedule.py,
  passed to deepspeed.initialize), because DeepSpeed's WarmupCosineLR trains its first two steps
  at lr 0 and never applies the peak.
"""
from __future__ import annotations

from llmlaunch.config import ConfigError, RunConfig
from llmlaunch.topology.memory import (ALLGATHER_BUCKET_ELEMENTS, REDUCE_BUCKET_ELEMENTS,
                                      ZERO3_MAX_LIVE_PARAMETERS, ZERO3_MAX_REUSE_DISTANCE,
                                      ZERO3_PERSISTENCE_THRESHOLD, ZERO3_PREFETCH_ELEMENTS)

ADAM_EPS = 1e-8


def bucket_elements(spec, layout, limit: int) -> int:
    """A communication bucket's elements: the limit, or the most parameters one rank holds when
    that is less (DeepSpeed allocates the whole bucket, however small the model)."""
    from llmlaunch.topology.memory import stage_params
    from llmlaunch.topology.stage_split import split_stages

    held = max(stage_params(spec, i, layout.pp, layout.tp, blocks)
               for i, blocks in enumerate(split_stages(spec, layout.pp, layout.tp)))
    return int(min(limit, held))


def zero_section(layout, on_gpu: bool, spec=None) -> dict:
    """zero_optimization: the stage, its buckets (no larger than what a rank holds), offload."""
    zero = {"stage": layout.zero_stage}
    reduce_bucket, allgather_bucket = REDUCE_BUCKET_ELEMENTS, ALLGATHER_BUCKET_ELEMENTS
    if spec is not None:
        reduce_bucket = bucket_elements(spec, layout, REDUCE_BUCKET_ELEMENTS)
        allgather_bucket = bucket_elements(spec, layout, ALLGATHER_BUCKET_ELEMENTS)
    if layout.zero_stage in (1, 2):
        zero.update({"reduce_bucket_size": reduce_bucket,
                     "allgather_bucket_size": allgather_bucket,
                     "overlap_comm": layout.pp == 1, "contiguous_gradients": True})
    elif layout.zero_stage == 3:
        zero.update({"reduce_bucket_size": reduce_bucket,
                     "stage3_prefetch_bucket_size": ZERO3_PREFETCH_ELEMENTS,
                     "stage3_param_persistence_threshold": ZERO3_PERSISTENCE_THRESHOLD,
                     "stage3_max_live_parameters": ZERO3_MAX_LIVE_PARAMETERS,
                     "stage3_max_reuse_distance": ZERO3_MAX_REUSE_DISTANCE,
                     "overlap_comm": True, "contiguous_gradients": True})
    if layout.offload != "none":
        # pinned host memory speeds the GPU's copies; a CPU rank has no device to copy from
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if layout.offload == "optimizer+params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    return zero


def optimizer_section(train, on_gpu: bool) -> dict:
    """ds_config's optimizer for AdamW; Lion and Adafactor are torch optimizers of our own handed to
    deepspeed.initialize (launcher/optimizers.py), which ZeRO accepts once told to."""
    if train.optimizer != "adamw":
        return {"zero_allow_untested_optimizer": True}
    return {"optimizer": {"type": "AdamW", "params": {
        "lr": train.lr, "betas": [train.beta1, train.beta2], "eps": ADAM_EPS,
        "weight_decay": train.weight_decay, **({} if on_gpu else {"torch_adam": True})}}}


def deepspeed_config(config: RunConfig, precision: str, on_gpu: bool = True,
                     layout=None) -> dict:
    """The ds_config.json dict for a run (on_gpu: the ranks run on GPUs, else on CPUs). `layout`:
    the rank's (its context's), or run.yaml's when not given (emit)."""
    lay, train = config.layout, config.train
    layout = layout or config.layout_obj()
    if not layout.runnable:
        raise ConfigError(f"layout: {layout.not_runnable_reason()}")
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"precision must be bf16 or fp32, got {precision!r}")
    if train.optimizer == "adafactor" and (precision == "bf16" or layout.zero_stage):
        raise ConfigError("train.optimizer adafactor runs in fp32 at layout.zero_stage=0 (ZeRO and "
                          "DeepSpeed's bf16 optimizer flatten the parameters): set "
                          "train.precision=fp32 layout.zero_stage=0")
    if precision == "bf16" and lay.zero_stage == 0:
        raise ConfigError("bf16 with ZeRO-0: DeepSpeed accumulates bf16 gradients in fp32 only under "
                          "ZeRO-1 (BF16_Optimizer); use layout.zero_stage=1, which at dp=1 holds the "
                          "same memory")
    zero = zero_section(layout, on_gpu, config.model_spec())
    ds = {
        "train_batch_size": lay.micro_batch * lay.grad_accum * lay.dp * layout.cp,
        "train_micro_batch_size_per_gpu": lay.micro_batch,
        "gradient_accumulation_steps": lay.grad_accum,
        "gradient_clipping": train.grad_clip,
        **optimizer_section(train, on_gpu),
        "zero_optimization": zero,
        **({} if on_gpu or layout.offload == "none" else {"zero_force_ds_cpu_optimizer": False}),
        "steps_per_print": 10 ** 9,  # llmlaunch logs itself
        "wall_clock_breakdown": False,
    }
    moe_carry = config.model_spec().moe
    if layout.pp > 1 and layout.tp > 1 and (moe_carry or layout.sequence_parallel):
        # DeepSpeed's partitioned sends (1/tp of the activation per tensor rank) assume every tensor
        # rank holds the whole activation: a sequence-parallel one is already 1/tp of the sequence;
        # an MoE model's items also pass the routing carry (model/moe.py), whose router sums need a
        # gradient back from the next stage, which partitioned sends take only for the hidden states
        ds["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    if precision == "bf16":
        ds["bf16"] = {"enabled": True}
        if lay.pp > 1 or lay.zero_stage <= 1:
            ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds
