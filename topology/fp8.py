"""FP8 training as Transformer Engine and torchao run it: the block's linear layers multiply in FP8,
everything else (attention, norms, the router, the LM head, the optimizer) stays in bf16.

What FP8 changes, each term a function below:
- the GEMMs of the linear layers run at the GPU's FP8 rate (GpuSpec.fp8_peak_tflops x
  fp8_matmul_efficiency, the MAMF of an FP8 matmul: stas00/ml-engineering's table) under the same
  tile model as bf16 (fp8_gemm_gpu); attention stays bf16 (Transformer Engine's FP8 attention is
  off by default; torchao converts nn.Linear only), and so do the router and the LM head (Megatron-
  Core's output layer is not a Transformer Engine module; torchtitan filters `output` out);
- every FP8 GEMM input is quantized first: the forward's inputs of QKV, the out-projection, the MLP
  up/gate and down projections, the backward's output gradients of the same four. A cast reads the
  bf16 tensor and writes the FP8 copy and, for the backward's transposed use, a second (transposed
  on Hopper, column-wise on Blackwell) copy; how the scale is found is the recipe
  (FP8_CAST_BYTES): delayed scaling (Transformer Engine's DelayedScaling: the scale from the amax
  history of earlier steps, the amax of this tensor taken in the same pass), current scaling
  (Float8CurrentScaling, torchao's tensorwise: an amax reduction over the tensor first, a second
  read), block scaling (DeepSeek-V3's 1 x 128 / 128 x 128 blocks, Blackwell's MXFP8 32-element
  blocks: the scale of each block found in the cast pass, plus a byte of scale per block);
- Transformer Engine keeps an FP8 copy of every weight and its transpose between micro-batches
  (2 bytes a linear parameter beside the bf16 weight, FP8_WEIGHT_COPY_BYTES), cast once per step;
  with FP8 primary weights (Megatron-Core's `fp8_param_gather`, which Megatron-Bridge's FP8
  recipes set: training/mixed_precision.py bf16_with_fp8_current_scaling_mixed) the FP8 weight and
  its transpose replace the bf16 copy (2 bytes either way: nothing extra), and the distributed
  optimizer gathers the updated weights in FP8; torchao casts the weights at every use (their
  bytes join the casts);
- Transformer Engine saves the linear layers' FP8 inputs for backward (activations.py, 'fused').
Scale bookkeeping (an amax and a scale per tensor, an amax history of 1024 steps per tensor under
delayed scaling) is a few kilobytes a layer: not counted.
"""
from __future__ import annotations

import dataclasses
import functools

from .hardware import GpuSpec
from .model_spec import ModelSpec

FP8_GEMMS = ("qkv", "q-proj", "q-down", "q-up", "kv-down", "kv-up", "out-proj", "mlp-up",
             "mlp-gate", "mlp-down", "shared-up", "shared-gate", "shared-down")
"""The GEMMs (gemms.py names) that run in FP8; attention, router, head and gates stay bf16."""
FP8_BYTES = 1
"""An E4M3 / E5M2 element."""
FP8_RECIPES = ("delayed", "current", "block")
DEFAULT_FP8_RECIPE = "current"
"""What NeMo / Megatron-Bridge's FP8 perf tables run on H100, B200 and GB200 (FP8-CS)."""
# HBM bytes per element of quantizing a bf16 tensor for FP8 GEMMs in both layouts: read 2, write
# 1 + 1 (the second layout); current scaling reads the tensor once more for its amax; block scaling
# writes one scale byte per 32-element block of each copy.
FP8_CAST_BYTES = {"delayed": 4.0, "current": 6.0, "block": 4.0 + 2 / 32}
# Transformer Engine's cached FP8 weight and its transpose (or column-wise copy), per parameter.
FP8_WEIGHT_COPY_BYTES = {"te": 2, "te-fp8-params": 0, "torchao": 0, "": 2}


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=64)
def fp8_gemm_gpu(gpu: GpuSpec) -> GpuSpec:
    """The GPU as its FP8 GEMMs see it: FP8 peak and the FP8 MAMF's efficiency; ValueError on a GPU
    without FP8 tensor cores (A100)."""
    if not gpu.fp8_peak_tflops:
        raise ValueError(f"--precision fp8: {gpu.name} has no FP8 tensor cores (the catalog gives "
                         "no fp8_peak_tflops); use bf16, or an H100, H200, B200 or GB200")
    return dataclasses.replace(gpu, peak_tflops=gpu.fp8_peak_tflops,
                               matmul_efficiency=gpu.fp8_matmul_efficiency, measured_gemm_tflops=())


def fp8_cast_elements_per_token(spec: ModelSpec, tp: int, sequence_parallel: bool = False) -> float:
    """Elements quantized per token and block on one TP rank: the forward inputs of QKV (h, h/t
    gathered under SP: the gathered input is what is cast), the out-projection (q/t), the MLP's up
    and gate (h) and down (f/t; MoE: k f_e + f_s), and in backward the output gradients of QKV
    ((q + 2 a_kv d)/t), the out-projection (h), the MLP up and gate (2f/t gated, f/t) and down (h)."""
    h, t = spec.hidden, tp
    f = spec.ffn_hidden
    if spec.moe:
        f = spec.experts_per_token * spec.expert_ffn_hidden + spec.shared_expert_ffn_hidden
    up = (2 if spec.gated_mlp else 1) * f
    forward = h + spec.q_width / t + h + f / t
    backward = (spec.q_width + 2 * spec.kv_hidden) / t + h + up / t + h
    return forward + backward


def fp8_cast_bytes_per_token(spec: ModelSpec, tp: int, recipe: str = DEFAULT_FP8_RECIPE,
                             sequence_parallel: bool = False) -> float:
    """HBM bytes per token and block the FP8 casts move (fp8_cast_elements_per_token x the
    recipe's bytes per element)."""
    if recipe not in FP8_CAST_BYTES:
        raise ValueError(f"FP8 recipe {recipe!r} is not one of {', '.join(FP8_RECIPES)}")
    return FP8_CAST_BYTES[recipe] * fp8_cast_elements_per_token(spec, tp, sequence_parallel)


def fp8_weight_cast_bytes(linear_params: float, fp8_path: str, per_micro_batch: bool) -> float:
    """HBM bytes of quantizing the FP8 linear layers' weights: Transformer Engine once per step
    (its cached copy is refreshed on the first micro-batch), torchao at every use, forward and
    backward, each micro-batch (per_micro_batch selects which of the two is asked for)."""
    cast = FP8_CAST_BYTES[DEFAULT_FP8_RECIPE] * linear_params
    if fp8_path == "torchao":
        return 2 * cast if per_micro_batch else 0.0
    return 0.0 if per_micro_batch else cast


def fp8_weight_copy_bytes(linear_params: float, fp8_path: str) -> float:
    """Bytes of the FP8 weight copies an engine keeps for `linear_params` parameters of FP8 linear
    layers (Transformer Engine: the weight and its transpose; torchao: none)."""
    return linear_params * FP8_WEIGHT_COPY_BYTES[fp8_path]
