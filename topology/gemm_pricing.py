"""What a stage's GEMMs cost in one micro-batch, as the step-time model prices them (step_time.py):
each GEMM at its shape (gemm_model.py), a fused attention kernel's at the kernel's measured rate,
the FP8 linear layers at the FP8 rate (fp8.py), all at the clock the GPU sustains under load; a
stage's list (gemms.stage_gemms) priced block by block, so that stages of other block counts, and
layouts that differ only in where their groups run, share the work."""
from __future__ import annotations

import functools

from .fp8 import FP8_GEMMS, fp8_gemm_gpu
from .gemm_model import at_sustained_clock, gemm_time_s
from .gemms import (ATTENTION_CORE, OP_SELECTIVE, Gemm, block_forward_gemms, head_forward_gemm,
                    op_recomputed_gemms, recomputed_gemms, with_backward)
from .hardware import GpuSpec
from .model_spec import ModelSpec
from .params import dense_variant


def attention_rate(gpu: GpuSpec, kernel: str, phase: str) -> float | None:
    """The fraction of peak a fused attention kernel reaches (GpuSpec.attention_efficiency): the
    engine's kernel, else the first the catalog lists for the GPU; None when it lists none."""
    rate = gpu.attention_fraction(kernel, phase)
    if rate is None and gpu.attention_efficiency:
        name = gpu.attention_efficiency[0][0]
        rate = gpu.attention_fraction(name, phase)
    return rate


# A fused attention kernel's backward runs five GEMMs of the forward's size where gemms.py lists
# four (dQ, dK, dP, dV): it recomputes the scores S = QK^T from the log-sum-exp it saved (Dao 2023,
# FlashAttention-2, Algorithm 2); its authors' benchmarks count the backward's FLOPs so, as 2.5
# forward passes (Dao-AILab/flash-attention benchmarks/benchmark_flash_attention.py, flops():
# "2.5 * f if mode == 'bwd'"), and the rates of GpuSpec.attention_efficiency are theirs. The
# backward GEMMs' time is their listed FLOPs x 2.5 / 2 at that rate (the FLOPs the model counts
# stay the papers': flops.py).
FUSED_ATTENTION_BACKWARD_FLOPS_FACTOR = 2.5 / 2


@functools.lru_cache(maxsize=65536)
def priced_gemm_time_s(gemm: Gemm, gpu: GpuSpec, act: int, *, fp8: bool = False,
                       attention_kernel: str = "") -> float:
    """One GEMM's seconds: a fused attention kernel's GEMMs (flash: an operand kept on chip) at the
    kernel's measured fraction of peak (attention_rate: forward for the forward and recomputed
    ones, backward for the rest, whose FLOPs the kernel's benchmark counts 2.5/2-fold), the FP8 linear layers at the FP8 rate (fp8.py), every other GEMM
    by the shape model (gemm_model.py); each at the clock the GPU sustains under full load
    (gemm_model.at_sustained_clock: the benchmarks ran at the boost clock)."""
    if gemm.name in ATTENTION_CORE and gemm.on_chip and attention_kernel:
        forward = gemm.phase == "forward"
        rate = attention_rate(gpu, attention_kernel, "forward" if forward else "backward")
        if rate is not None:
            flops = gemm.executed_flops * (1.0 if forward else FUSED_ATTENTION_BACKWARD_FLOPS_FACTOR)
            return flops / (gpu.peak_tflops * 1e12 * rate * gpu.sustained_clock_fraction)
    if fp8 and gemm.name in FP8_GEMMS:
        return gemm_time_s(gemm, at_sustained_clock(fp8_gemm_gpu(gpu)), 1)
    return gemm_time_s(gemm, at_sustained_clock(gpu), act)


@functools.lru_cache(maxsize=4096)
def _gemm_list_times(spec: ModelSpec, gpu: GpuSpec, act: int, fp8: bool, attention_kernel: str,
                     micro_batch: int, seq_len: int, tp: int, flash_attention: bool, ep: int,
                     capacity_factor: float, cp: int, cp_kind: str,
                     head: bool = False) -> tuple[float, dict, dict]:
    """(seconds of one block's forward and backward GEMMs for one micro-batch, or of the LM head's
    when `head`; {GEMM: seconds} of each distinct one; {recompute mode: seconds of the forward GEMMs
    it runs again}, gemms.recomputed_gemms, and OP_SELECTIVE's gemms.op_recomputed_gemms: slices of
    the same GEMMs, so they add no distinct one): each
    priced at its shape (gemms.py, gemm_model.py) or, fused attention, at its kernel's measured
    rate (priced_gemm_time_s)."""
    if head:
        forward = (head_forward_gemm(spec, micro_batch=micro_batch, seq_len=seq_len / cp, tp=tp),)
    else:
        forward = block_forward_gemms(spec, micro_batch=micro_batch, seq_len=seq_len, tp=tp,
                                      causal_skip=flash_attention, ep=ep,
                                      capacity_factor=capacity_factor, cp=cp, cp_kind=cp_kind)
    gemms = with_backward(forward)
    times = {g: priced_gemm_time_s(g, gpu, act, fp8=fp8, attention_kernel=attention_kernel)
             for g in gemms}
    again = {mode: (0.0 if head else sum(times[g] for g in recomputed_gemms(forward, mode)))
             for mode in ("none", "selective", "full")}
    again[OP_SELECTIVE] = again["selective"]
    if not head and not spec.moe and not spec.mla:
        again[OP_SELECTIVE] = sum(
            priced_gemm_time_s(g, gpu, act, fp8=fp8, attention_kernel=attention_kernel)
            for g in op_recomputed_gemms(spec, micro_batch=micro_batch, seq_len=seq_len, tp=tp, cp=cp))
    return sum(times[g] for g in gemms), times, again


def stage_gemm_times(spec: ModelSpec, gpu: GpuSpec, act: int, fp8: bool, attention_kernel: str,
                     blocks: int, last: bool, micro_batch: int, seq_len: int, tp: int,
                     recompute: str, flash_attention: bool, ep: int, capacity_factor: float,
                     cp: int, cp_kind: str, dense: int) -> tuple[float, dict]:
    """(seconds of a stage's GEMMs for one micro-batch, {(name, phase): seconds of one of each
    distinct GEMM}), the GEMMs of gemms.stage_gemms: its blocks (an MoE model's first `dense`
    blocks with their dense MLP) with what `recompute` runs again, and on the last stage the head.
    Priced block by block (_gemm_list_times), so that stages of other block counts and other
    recompute modes share the work. Callers read the dict, never change it."""
    shape = (gpu, act, fp8, attention_kernel, micro_batch, seq_len, tp, flash_attention, ep,
             capacity_factor, cp, cp_kind)

    def block_s(part_spec: ModelSpec) -> float:
        total, _, again = _gemm_list_times(part_spec, *shape)
        return total + again[recompute]

    total = 0.0
    if blocks > dense:
        total += (blocks - dense) * block_s(spec)
    if dense:
        total += dense * block_s(dense_variant(spec))
    if last:
        total += _gemm_list_times(spec, *shape, head=True)[0]
    return total, _distinct_gemm_times(spec, shape, blocks > dense, dense > 0, last)


@functools.lru_cache(maxsize=4096)
def _distinct_gemm_times(spec: ModelSpec, shape: tuple, moe_blocks: bool, dense_blocks: bool,
                         last: bool) -> dict:
    """{(name, phase): seconds of one of each distinct GEMM} of a stage with MoE (or dense-model)
    blocks, first dense blocks and the head as given (stage_gemm_times)."""
    distinct: dict = {}
    for present, part_spec, head in ((moe_blocks, spec, False), (dense_blocks, dense_variant(spec), False),
                                     (last, spec, True)):
        if present:
            distinct.update(_gemm_list_times(part_spec, *shape, head=head)[1])
    by_name: dict = {}
    for g, t in distinct.items():
        by_name[(g.name, g.phase)] = by_name.get((g.name, g.phase), 0.0) + t
    return by_name
