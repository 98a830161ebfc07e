"""Time of one GEMM from its shape: tile and wave quantisation, a roofline against HBM.

A GPU GEMM library splits C[m, n] into output tiles of tile_m x tile_n, one thread block per tile,
one tile per SM at a time (NVIDIA, Matrix Multiplication Background User's Guide, 2023, §2.3, §3):

  tile quantisation   m and n are padded up to whole tiles: ceil(m / tile_m) ceil(n / tile_n) tiles
  wave quantisation   the tiles (times the batch) run in waves of sm_count:
                      waves = ceil(tiles / sm_count)
  useful fraction     q = m n batch / (waves sm_count tile_m tile_n)        (1 when both divide)

The kernel then runs at the GPU's peak x matmul_efficiency (the Maximum Achievable Matmul FLOPS, a
shape where q = 1) times q, unless reading A and B and writing C once each from HBM takes longer
(the roofline; Williams et al. 2009):

  t = max(executed FLOPs / (peak eff q),  elem_bytes (m k + k n + m n) batch / HBM bandwidth)

On a GPU whose GEMM kernels write C after their main loop (GpuSpec.gemm_serial_epilogue: Ampere's
cuBLAS/CUTLASS kernels, where "the epilogue is a separate phase" after the software-pipelined main
loop that overlaps the A and B loads with the math, NVIDIA CUTLASS media/docs/cpp/efficient_gemm.md;
a 256 x 128 tile's registers leave one thread block per SM, so no other block hides it) the store
of C adds to the main loop instead of hiding under it:

  t = max(executed FLOPs / (peak eff q),  elem_bytes (m k + k n) batch / HBM bandwidth)
      + elem_bytes m n batch / HBM bandwidth

Hopper's warp-specialised ping-pong kernels overlap one tile's epilogue with another's math (the
same document), so there the roofline's max holds. A fused kernel that keeps an operand on chip
(flash attention: Gemm.on_chip) is not a library GEMM: the roofline's max.

Every wave of output tiles also pays a fixed time before and after its K loop (filling the
software pipeline, the epilogue): GpuSpec.gemm_wave_overhead_us, t_0, so a GEMM of short K (a
narrow model's h-deep projections, an attention core's d-deep scores) runs further from peak than
a deep one:

  compute = executed FLOPs / (peak eff q) + waves t_0

t_0 is read off a published K sweep at fixed M = N = 8192 (xwhzz/tilelang benchmark/matmul_fp8/
README.md, H800 SXM, 2048 output tiles of 256 x 128: 16 waves of 132 SMs): its latency is linear in
K; the line through K = 2048 (0.204672 ms) and K = 16384 (1.427264 ms) has 8.53e-5 ms per unit of K
and 0.0300 ms at K = 0, 1.88 us a wave (wave_overhead_s). The catalog takes it for Hopper and for
Ampere (the same multistage software pipeline, cp.async on Ampere, TMA on Hopper); no K sweep was
found for Blackwell or CDNA 3, whose entries leave it 0. Each entry's matmul_efficiency is derived
with its t_0 from its MAMF shape (matmul_efficiency_from).

The tile is taken in whichever orientation (tile_m x tile_n or tile_n x tile_m) wastes less, as
the library's heuristic would. A device measured at a shape (GpuSpec.measured_gemm_tflops, from
`llmlaunch validate`'s probe) is priced at its measured rate there instead. A CPU entry has no
tile model (sm_count 0): q = 1.
"""
from __future__ import annotations

import dataclasses
import functools
import math

from .gemms import Gemm
from .hardware import GpuSpec


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=64)
def at_sustained_clock(gpu: GpuSpec) -> GpuSpec:
    """The GPU as its tensor cores run under sustained full load (GpuSpec.sustained_clock_fraction
    f): the SM clock drops, so the GEMM rates scale by f and each wave's fixed time (cycles) by
    1/f; the HBM clock does not drop, so a memory-bound GEMM keeps its time."""
    f = gpu.sustained_clock_fraction
    if f == 1.0:
        return gpu
    return dataclasses.replace(gpu, matmul_efficiency=gpu.matmul_efficiency * f,
                               fp8_matmul_efficiency=gpu.fp8_matmul_efficiency * f,
                               gemm_wave_overhead_us=gpu.gemm_wave_overhead_us / f,
                               sustained_clock_fraction=1.0)


def wave_overhead_s(k_short: float, seconds_short: float, k_long: float, seconds_long: float,
                    wave_count: int) -> float:
    """t_0 from two GEMMs of the same M, N (so the same waves) and different K: the time the line
    through them has at K = 0, over the waves (module docstring)."""
    per_k = (seconds_long - seconds_short) / (k_long - k_short)
    return (seconds_short - per_k * k_short) / wave_count


def waves(gemm: Gemm, gpu: GpuSpec) -> int:
    """Waves of output tiles the GEMM runs in (the orientation with fewer tiles); 0 without a tile
    model."""
    if not gpu.sm_count:
        return 0
    tiles = min(math.ceil(gemm.m / a) * math.ceil(gemm.n / b)
                for a, b in ((gpu.gemm_tile_m, gpu.gemm_tile_n), (gpu.gemm_tile_n, gpu.gemm_tile_m)))
    return math.ceil(tiles * gemm.batch / gpu.sm_count)


def useful_fraction(m: float, n: float, batch: int, tile_m: int, tile_n: int, sm_count: int) -> float:
    """q = m n batch / (waves sm_count tile_m tile_n) for one tile orientation."""
    tiles = math.ceil(m / tile_m) * math.ceil(n / tile_n) * batch
    waves = math.ceil(tiles / sm_count)
    return m * n * batch / (waves * sm_count * tile_m * tile_n)


def quantisation(gemm: Gemm, gpu: GpuSpec) -> float:
    """The better of the two tile orientations; 1 without a tile model."""
    if not gpu.sm_count:
        return 1.0
    return max(useful_fraction(gemm.m, gemm.n, gemm.batch, gpu.gemm_tile_m, gpu.gemm_tile_n,
                               gpu.sm_count),
               useful_fraction(gemm.m, gemm.n, gemm.batch, gpu.gemm_tile_n, gpu.gemm_tile_m,
                               gpu.sm_count))


def compute_time_s(gemm: Gemm, gpu: GpuSpec) -> float:
    """Executed FLOPs at peak x matmul_efficiency x the useful fraction, plus every wave's fixed
    time outside its K loop (GpuSpec.gemm_wave_overhead_us)."""
    return (gemm.executed_flops / (gpu.achievable_flops_per_s * quantisation(gemm, gpu))
            + waves(gemm, gpu) * gpu.gemm_wave_overhead_us * 1e-6)


def memory_time_s(gemm: Gemm, gpu: GpuSpec, elem_bytes: int) -> float:
    """Each operand read, the result written, once from/to HBM, at what a streaming kernel
    sustains (GpuSpec.hbm_bytes_per_s)."""
    return elem_bytes * gemm.operand_elements() / gpu.hbm_bytes_per_s


def store_time_s(gemm: Gemm, gpu: GpuSpec, elem_bytes: int) -> float:
    """C written once to HBM: elem_bytes m n batch / HBM bandwidth."""
    return elem_bytes * gemm.m * gemm.n * gemm.batch / gpu.hbm_bytes_per_s


def serial_epilogue(gemm: Gemm, gpu: GpuSpec) -> bool:
    """The library GEMM writes C after its main loop (GpuSpec.gemm_serial_epilogue; not a fused
    kernel keeping an operand on chip)."""
    return gpu.gemm_serial_epilogue and not gemm.on_chip


def model_time_s(gemm: Gemm, gpu: GpuSpec, elem_bytes: int) -> float:
    """The shape model's time (module docstring): the roofline's max of compute and memory, or with
    a serial epilogue the max of compute and the A, B loads, plus the C store."""
    if serial_epilogue(gemm, gpu):
        store = store_time_s(gemm, gpu, elem_bytes)
        loads = memory_time_s(gemm, gpu, elem_bytes) - store
        return max(compute_time_s(gemm, gpu), loads) + store
    return max(compute_time_s(gemm, gpu), memory_time_s(gemm, gpu, elem_bytes))


@functools.lru_cache(maxsize=65536)
def gemm_time_s(gemm: Gemm, gpu: GpuSpec, elem_bytes: int) -> float:
    """Seconds of one GEMM: its measured rate if this device was measured at its shape, else the
    larger of compute and memory time."""
    measured = gpu.measured_tflops(gemm.shape) if gpu.measured_gemm_tflops else None
    if measured:
        return gemm.executed_flops / (measured * 1e12)
    return model_time_s(gemm, gpu, elem_bytes)


def gemm_efficiency(gemm: Gemm, gpu: GpuSpec, elem_bytes: int) -> float:
    """Model FLOPs per second over the GPU's peak, for this shape."""
    return gemm.flops / gemm_time_s(gemm, gpu, elem_bytes) / (gpu.peak_tflops * 1e12)


def matmul_efficiency_from(flops: float, seconds: float, gemm: Gemm, gpu: GpuSpec,
                           elem_bytes: int) -> float:
    """The matmul_efficiency with which a compute-bound GEMM of this shape takes `seconds`:
    flops / (peak q (seconds - the waves' fixed time - the C store when the epilogue is serial)).
    How the catalog turns the MAMF measurement at its best shape into its figure, and validate a
    measured rate."""
    main_loop = (seconds - waves(gemm, gpu) * gpu.gemm_wave_overhead_us * 1e-6
                 - (store_time_s(gemm, gpu, elem_bytes) if serial_epilogue(gemm, gpu) else 0.0))
    return flops / (gpu.peak_tflops * 1e12 * quantisation(gemm, gpu) * main_loop)


def fitted_matmul_efficiency(measured_tflops: dict, gemms, gpu: GpuSpec, elem_bytes: int) -> float | None:
    """The matmul_efficiency that reproduces measured rates ({shape: TFLOP/s}) of `gemms`: for each
    GEMM the model calls compute-bound, matmul_efficiency_from its measured time; their median. None
    when no measured GEMM is compute-bound (a run on a GPU fits the catalog figure this way:
    validate.json)."""
    ratios = []
    for g in gemms:
        rate = measured_tflops.get(g.shape)
        loads = memory_time_s(g, gpu, elem_bytes) - (
            store_time_s(g, gpu, elem_bytes) if serial_epilogue(g, gpu) else 0.0)
        if rate and compute_time_s(g, gpu) >= loads:
            ratios.append(matmul_efficiency_from(g.executed_flops, g.executed_flops / (rate * 1e12),
                                                 g, gpu, elem_bytes))
    if not ratios:
        return None
    ratios.sort()
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
