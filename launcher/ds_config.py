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
- On a CPU the optimizer is torch's AdamW (`torch_adam`), not DeepSpeed's FusedAdam: the CPU build
  of FusedAdam keeps Adam's bias-correction products beta^t as a running product in a C++ object
  that no checkpoint holds, and recomputes them with pow() after a restart, so a resumed run
  differed from an uninterrupted one in the last bits. torch's AdamW (and the CUDA FusedAdam)
  compute them from the step count, which the checkpoint holds: resume is bit-exact.
- No `scheduler` section: the learning-rate schedule is llmlaunch's (launcher/lr_schedule.py,
  passed to deepspeed.initialize), because DeepSpeed's WarmupCosineLR trains its first two steps
  at lr 0 and never applies the peak.
"""
from __future__ import annotations

from llmlaunch.config import ConfigError, RunConfig
from llmlaunch.topology.memory import ALLGATHER_BUCKET_ELEMENTS, REDUCE_BUCKET_ELEMENTS

ADAM_EPS = 1e-8


def deepspeed_config(config: RunConfig, precision: str, on_gpu: bool = True) -> dict:
    """The ds_config.json dict for a run (on_gpu: the ranks run on GPUs, else on CPUs)."""
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
            "weight_decay": train.weight_decay, **({} if on_gpu else {"torch_adam": True})}},
        "zero_optimization": zero,
        "steps_per_print": 10 ** 9,  # llmlaunch logs itself
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        ds["bf16"] = {"enabled": True}
        if lay.pp > 1 or lay.zero_stage <= 1:
            ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds
