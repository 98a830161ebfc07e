"""Accelerators and clusters: the catalog in data/gpus.yaml, with per-figure overrides."""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass


from .data_files import load_data_yaml
from .frozen_hash import cached_hash

GIB = 1024 ** 3


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator's figures (see data/gpus.yaml for each field's meaning and source)."""

    name: str
    memory_gib: float
    peak_tflops: float
    matmul_efficiency: float
    hbm_gb_per_s: float
    intra_node_gb_per_s: float
    inter_node_gb_per_s: float
    framework_gib: float
    tdp_watts: float
    precision: str = "bf16"
    """Training precision on this device: bf16 on GPUs, fp32 on CPU."""
    op_overhead_us: float = 0.0
    """Host time to dispatch one framework op (PyTorch eager dispatch and autograd bookkeeping, plus
    the kernel launch on a GPU)."""
    collective_latency_us: float = 0.0
    """Fixed cost of one message of a collective or point-to-point transfer: a ring all-reduce
    pays it 2 (n - 1) times, an all-gather n - 1 times, a send once (the alpha of Hockney's
    alpha-beta model)."""
    async_dispatch: bool = True
    """True on a GPU: kernels run while the host queues the next ones, so a pass takes the longer of
    host and device time. False on a CPU, which is its own host: the two add."""
    host_measured: bool = False
    """The entry describes the machine it runs on (`cpu`): its memory and peak are read from this
    host when a caller asks for them (gpu(name, measure=True)), else the catalog's stand-ins hold."""
    sm_count: int = 0
    """Streaming multiprocessors: one GEMM output tile runs on one SM at a time, so a GEMM runs in
    ceil(tiles / sm_count) waves (wave quantisation). 0: no tile model (a CPU)."""
    gemm_tile_m: int = 0
    gemm_tile_n: int = 0
    """The GEMM library's output tile (M x N per thread block) on large matrices: M and N are padded
    up to multiples of it (tile quantisation). Either orientation is taken, whichever wastes less."""
    hbm_efficiency: float = 1.0
    """Fraction of hbm_gb_per_s a streaming kernel (copy, saxpy) sustains: what memory-bound
    kernels and the memory side of the GEMM roofline get."""
    measured_gemm_tflops: tuple = ()
    """((shape, TFLOP/s), ...) measured on this device at given GEMM shapes ("MxNxK" or
    "MxNxKxB", launcher/device_probe.py): a GEMM of a measured shape is priced at its measured rate
    instead of the shape model (validate's CPU prediction)."""

    gemm_serial_epilogue: bool = False
    """The GEMM kernels write C after their main loop, not under it (Ampere's cuBLAS/CUTLASS
    kernels; topology/gemm_model.py): the C store adds to the GEMM's time."""
    allreduce_busbw: tuple = ()
    """((bytes, GB/s), ...) ascending: NCCL all_reduce_perf bus bandwidth measured at each buffer
    size among the GPUs of one node. A collective inside a node is priced at the bus bandwidth its
    buffer reaches (step_time.bus_gb_per_s); empty: intra_node_gb_per_s and collective_latency_us."""
    host_link_gb_per_s: float = 0.0
    """GPU <-> CPU memory bandwidth per direction (the PCIe link): what ZeRO-Offload's copies move
    at. 0: not known (offload is not searched on this device)."""
    host_memory_gb_per_s: float = 0.0
    """CPU memory bandwidth per GPU (the node's DRAM bandwidth / its GPUs): what DeepSpeed's CPU
    Adam, memory-bound like any Adam, runs at under offload. 0: not known."""
    host_memory_gib: float = 0.0
    """CPU memory per GPU (the node's DRAM / its GPUs): what offloaded states must fit in."""
    nccl_channels: int = 0
    """Thread blocks (one SM each) NCCL's collective kernels occupy inside a node: what a GEMM running
    beside an overlapped collective loses. 0: not known (the overlap is taken as free)."""
    inter_node_latency_us: float | None = None
    """collective_latency_us for a message between nodes, when it differs from the one inside a node
    (measured by `llmlaunch preflight` across hosts, plan --network-from); None: the same."""
    fp8_peak_tflops: float = 0.0
    """Dense FP8 tensor-core peak (0: no FP8 tensor cores; `--precision fp8` is refused)."""
    fp8_matmul_efficiency: float = 0.0
    """Fraction of fp8_peak_tflops an FP8 GEMM of a well-tiled shape reaches (the FP8 MAMF)."""
    gemm_wave_overhead_us: float = 0.0
    """Fixed time each wave of GEMM output tiles spends outside its K loop (pipeline fill and
    epilogue; topology/gemm_model.py); 0: not measured (taken as hidden)."""
    sustained_clock_fraction: float = 1.0
    """Fraction of the tensor-core rate the benchmarks measure (MAMF, attention kernels: short
    bursts on an otherwise idle GPU, at the boost clock) that the GPU keeps under sustained full
    load at its power limit, where its SM clock drops (the HBM clock does not); applied to GEMMs
    and fused attention (gemm_pricing.priced_gemm_time_s). 1: no throttling measured."""
    attention_efficiency: tuple = ()
    """((kernel, forward fraction, backward fraction), ...): the fraction of the bf16 peak a fused
    attention kernel (fa2, cudnn, fa3) reaches at long sequences (its authors' benchmarks at head
    dim 128); a kernel not listed is priced by the GEMM shape model (topology/gemm_model.py)."""

    def __post_init__(self):
        curve = tuple((float(size), float(bw)) for size, bw in self.allreduce_busbw)
        object.__setattr__(self, "allreduce_busbw", curve)
        if any(bw <= 0 or size <= 0 for size, bw in curve) or any(
                b[0] <= a[0] for a, b in zip(curve, curve[1:])):
            raise ValueError(f"GPU {self.name}: allreduce_busbw must list (bytes, GB/s) pairs, both "
                             f"positive, sizes ascending")
        if isinstance(self.nccl_channels, bool) or not isinstance(self.nccl_channels, int) or not (
                0 <= self.nccl_channels < max(self.sm_count, 1)):
            raise ValueError(f"GPU {self.name}: nccl_channels must be an integer from 0 to below "
                             f"sm_count, got {self.nccl_channels!r}")
        for field in ("memory_gib", "peak_tflops", "matmul_efficiency", "hbm_gb_per_s",
                      "intra_node_gb_per_s", "inter_node_gb_per_s", "tdp_watts"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"GPU {self.name}: {field} must be a positive number, got {value!r}")
        for field in ("op_overhead_us", "collective_latency_us", "inter_node_latency_us",
                      "host_link_gb_per_s", "host_memory_gb_per_s", "host_memory_gib"):
            value = getattr(self, field)
            if value is None and field == "inter_node_latency_us":
                continue
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"GPU {self.name}: {field} must be a number >= 0, got {value!r}")
        if not 0 < self.hbm_efficiency <= 1:
            raise ValueError(f"GPU {self.name}: hbm_efficiency must be in (0, 1], got {self.hbm_efficiency}")
        if not 0 < self.sustained_clock_fraction <= 1:
            raise ValueError(f"GPU {self.name}: sustained_clock_fraction must be in (0, 1], got "
                             f"{self.sustained_clock_fraction}")
        if self.matmul_efficiency > 1:
            raise ValueError(f"GPU {self.name}: matmul_efficiency must be <= 1, got {self.matmul_efficiency}")
        for field in ("sm_count", "gemm_tile_m", "gemm_tile_n"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"GPU {self.name}: {field} must be an integer >= 0, got {value!r}")
        if self.sm_count and not (self.gemm_tile_m and self.gemm_tile_n):
            raise ValueError(f"GPU {self.name}: sm_count needs gemm_tile_m and gemm_tile_n")
        curve = tuple((str(k), float(f), float(b)) for k, f, b in self.attention_efficiency)
        object.__setattr__(self, "attention_efficiency", curve)
        if any(not (0 < f <= 1 and 0 < b <= 1) for _, f, b in curve):
            raise ValueError(f"GPU {self.name}: attention_efficiency fractions must be in (0, 1]")
        if self.fp8_peak_tflops and not 0 < self.fp8_matmul_efficiency <= 1:
            raise ValueError(f"GPU {self.name}: fp8_matmul_efficiency must be in (0, 1] with an FP8 "
                             "peak")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"GPU {self.name}: precision must be bf16 or fp32, got {self.precision!r}")

    def __hash__(self) -> int:
        return cached_hash(self)

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GIB

    @property
    def achievable_flops_per_s(self) -> float:
        """What a GEMM of a shape that fills every tile and wave reaches: peak x matmul_efficiency
        (topology/gemm_model.py prices other shapes)."""
        return self.peak_tflops * 1e12 * self.matmul_efficiency

    def attention_fraction(self, kernel: str, phase: str) -> float | None:
        """The fraction of peak `kernel` reaches in `phase` ('forward' or backward), if known."""
        for name, forward, backward in self.attention_efficiency:
            if name == kernel:
                return forward if phase == "forward" else backward
        return None

    def measured_tflops(self, shape: str) -> float | None:
        """The measured rate of a GEMM of `shape` on this device, if one was measured."""
        for key, tflops in self.measured_gemm_tflops:
            if key == shape:
                return tflops
        return None

    @property
    def hbm_bytes_per_s(self) -> float:
        """What a streaming kernel sustains: hbm_gb_per_s x hbm_efficiency."""
        return self.hbm_gb_per_s * 1e9 * self.hbm_efficiency

    @property
    def op_overhead_s(self) -> float:
        return self.op_overhead_us * 1e-6

    @property
    def collective_latency_s(self) -> float:
        return self.collective_latency_us * 1e-6

    @property
    def inter_node_latency_s(self) -> float:
        """The alpha of a message between nodes (collective_latency_s unless measured apart)."""
        if self.inter_node_latency_us is None:
            return self.collective_latency_s
        return self.inter_node_latency_us * 1e-6

    def link_latency_s(self, spans_nodes: bool) -> float:
        """The alpha of a message on the link a group uses: between nodes or inside one."""
        return self.inter_node_latency_s if spans_nodes else self.collective_latency_s


@functools.lru_cache(maxsize=1)
def _catalog() -> dict:
    return load_data_yaml("gpus.yaml")


def gpu_names() -> list[str]:
    return list(_catalog())


def measure_cpu_peak_tflops(size: int = 512, seconds: float = 0.2) -> float:
    """fp32 GEMM throughput of this host through numpy's BLAS (2 n^3 FLOPs per n x n matmul)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    a @ a  # warm-up: thread pool start
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < 3:
        a @ a
        count += 1
    return 2 * size ** 3 * count / elapsed / 1e12


def host_memory_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / GIB


def gpu(name: str, measure: bool = False, **overrides) -> GpuSpec:
    """The catalog entry `name` with any figure replaced by a non-None override (overriding
    intra_node_gb_per_s drops the catalog's measured allreduce_busbw curve: collectives inside a
    node then take the given bandwidth). A lookup has no side effects: only with measure=True does an entry describing this host (`cpu`) read its memory and
    time a GEMM (overrides still win)."""
    table = _catalog()
    key = name.lower()
    if key not in table:
        raise ValueError(f"--gpu {name!r} is not in the catalog; known: {', '.join(table)}")
    entry = {k: v for k, v in table[key].items() if k != "sources"}
    unknown = set(entry) - {f.name for f in dataclasses.fields(GpuSpec)}
    if unknown:
        raise ValueError(f"GPU catalog entry {name!r} has unknown keys: {', '.join(sorted(unknown))}")
    if measure and entry.get("host_measured"):
        entry["memory_gib"] = round(host_memory_gib(), 1)
        entry["peak_tflops"] = round(measure_cpu_peak_tflops(), 4)
    given = {k: v for k, v in overrides.items() if v is not None}
    if "intra_node_gb_per_s" in given and "allreduce_busbw" not in given:
        entry.pop("allreduce_busbw", None)   # the measured curve is the catalog interconnect's
    entry.update(given)
    return GpuSpec(name=key, **entry)


def gpu_source(name: str) -> str:
    return _catalog()[name.lower()].get("sources", "")


@dataclass(frozen=True)
class Cluster:
    """N accelerators in nodes of gpus_per_node."""

    gpus: int
    gpus_per_node: int
    gpu: GpuSpec

    def __post_init__(self):
        if not isinstance(self.gpus, int) or self.gpus < 1:
            raise ValueError(f"--gpus must be a positive integer, got {self.gpus!r}")
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node < 1:
            raise ValueError(f"--gpus-per-node must be a positive integer, got {self.gpus_per_node!r}")
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ValueError(f"--gpus {self.gpus} is not a whole number of nodes of "
                             f"--gpus-per-node {self.gpus_per_node}")

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // self.gpus_per_node)
