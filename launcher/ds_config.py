"""The DeepSpeed config, derived from run.yaml (never written by hand).

DeepSpeed's traps it encodes:
- train_batch_size must equal micro_batch * grad_accum * dp (DeepSpeed asserts it at start-up;
  checked here first, with the numbers).
- The pipeline engine refuses ZeRO-2/3 (an assertion at engine construction), at pp = 1 too: the
  model is always a PipelineModule, so every llmlaunch run gets that engine.
- bf16 with a pipeline accumulates gradients in fp32 (data_types.grad_accum_dtype = fp32) so that
  ZeRO-1 runs DeepSpeed's BF16 optimizer, as BLOOM trained: bf16 accumulation over many
  micro-batches loses precision. ZeRO-0 has no such path ("unsupported mix of model_dtype and
  grad_accum_dtype" at start-up): bf16 with ZeRO-0 is refused here, with the fix.
"""
from __future__ import annotations

from llmlaunch.config import ConfigError, RunConfig
from llmlaunch.topology.memory import ALLGATHER_BUCKET_ELEMENTS, REDUCE_BUCKET_ELEMENTS

ADAM_EPS = 1e-8


def deepspeed_config(config: RunConfig, precision: str) -> dict:
    """The ds_config.json dict for a run."""
    lay, train = config.layout, config.train
    if lay.zero_stage >= 2:
        raise ConfigError(f"ZeRO-{lay.zero_stage}: DeepSpeed's pipeline engine, which runs llmlaunch's "
                          "model at any pp, supports ZeRO 0 and 1 only; use layout.zero_stage=1")
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"precision must be bf16 or fp32, got {precision!r}")
    if precision == "bf16" and lay.zero_stage == 0:
        raise ConfigError("bf16 with ZeRO-0: DeepSpeed accumulates bf16 gradients in fp32 only under "
                          "ZeRO-1 (BF16_Optimizer); use layout.zero_stage=1, which at dp=1 holds the "
                          "same memory")
    zero = {"stage": lay.zero_stage}
    if lay.zero_stage == 1:
        zero.update({"reduce_bucket_size": REDUCE_BUCKET_ELEMENTS,
                     "allgather_bucket_size": ALLGATHER_BUCKET_ELEMENTS,
                     "overlap_comm": lay.pp == 1, "contiguous_gradients": True})
    ds = {
        "train_batch_size": lay.micro_batch * lay.grad_accum * lay.dp,
        "train_micro_batch_size_per_gpu": lay.micro_batch,
        "gradient_accumulation_steps": lay.grad_accum,
        "gradient_clipping": train.grad_clip,
        "optimizer": {"type": "AdamW", "params": {
            "lr": train.lr, "betas": [train.beta1, train.beta2], "eps": ADAM_EPS,
            "weight_decay": train.weight_decay}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": train.steps, "warmup_num_steps": train.warmup_steps,
            "warmup_min_ratio": 0.0, "cos_min_ratio": train.min_lr / train.lr if train.lr else 0.0,
            "warmup_type": "linear"}},
        "zero_optimization": zero,
        "steps_per_print": 10 ** 9,  # llmlaunch logs itself
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        ds["bf16"] = {"enabled": True}
        if lay.pp > 1 or lay.zero_stage <= 1:
            ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds
