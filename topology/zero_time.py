"""ZeRO-2/3 and ZeRO-Offload in the step time: the data-parallel collectives DeepSpeed runs every
micro-batch at stages 2 and 3 (Rajbhandari et al. 2020), what of them compute hides, the host time of
DeepSpeed's per-parameter hooks, and the host-link copies and CPU Adam of offload (Ren et al. 2021).
The collectives' alpha-beta costs are step_time.py's."""
from __future__ import annotations

from .engines import Engine
from .hardware import GpuSpec
from .memory import Precision
from .model_spec import ModelSpec
from .step_time import GB, allgather_time_s, optimizer_time_s, overlapped_exposed_s


def zero3_gather_time_s(stage_params: float, precision: Precision, gpu: GpuSpec, *, dp: int,
                        dp_spans_nodes: bool) -> float:
    """ZeRO-3 per micro-batch: weights all-gathered for forward and again for backward."""
    bw = gpu.inter_node_gb_per_s if dp_spans_nodes else gpu.intra_node_gb_per_s
    return 2 * allgather_time_s(stage_params * precision.weight_bytes, dp, bw,
                                gpu.link_latency_s(dp_spans_nodes))


def zero_micro_batch_bytes(stage_params: float, precision: Precision, zero_stage: int) -> float:
    """Bytes of the buffers ZeRO-2/3 put through a data-parallel collective every micro-batch, in the
    model dtype (DeepSpeed reduces ZeRO-2/3 gradients in it): ZeRO-2 reduce-scatters the gradients,
    Psi; ZeRO-3 also all-gathers the weights for forward and for backward, 3 Psi (Rajbhandari et al.
    2020, Section 7.2.2: 3 Psi per step against data parallelism's 2 Psi, 1.5x). Each is a ring
    half, (n-1)/n of the buffer per GPU. ZeRO 0/1: none (they reduce once per step)."""
    if zero_stage < 2:
        return 0.0
    return (3 if zero_stage == 3 else 1) * stage_params * precision.weight_bytes


def zero_micro_batch_time_s(stage_params: float, precision: Precision, gpu: GpuSpec, *, dp: int,
                            zero_stage: int, dp_spans_nodes: bool) -> float:
    """Time of zero_micro_batch_bytes as ring halves over dp: ZeRO-3 two all-gathers
    (zero3_gather_time_s) and a reduce-scatter, ZeRO-2 the reduce-scatter."""
    if zero_stage < 2:
        return 0.0
    bw = gpu.inter_node_gb_per_s if dp_spans_nodes else gpu.intra_node_gb_per_s
    reduce_scatter = allgather_time_s(stage_params * precision.weight_bytes, dp, bw,
                                      gpu.link_latency_s(dp_spans_nodes))
    if zero_stage == 3:
        return zero3_gather_time_s(stage_params, precision, gpu, dp=dp,
                                   dp_spans_nodes=dp_spans_nodes) + reduce_scatter
    return reduce_scatter


def zero3_exposed_s(gather_s: float, reduce_scatter_s: float, compute_s: float,
                    comm_sm_share: float = 0.0) -> float:
    """What ZeRO-3's collectives add to one micro-batch: the two all-gathers (forward, backward),
    prefetched, hide behind the micro-batch's compute, what exceeds it shows, and while they run
    NCCL's channels hold comm_sm_share of the SMs the compute loses (overlapped_exposed_s); the
    gradient reduce-scatter shows whole. Hiding it too would put OPT-175B's published FSDP run
    (dp 124 x tp 8, Zhang et al. 2022: 147 TFLOP/s per GPU) further above it (docs/planner.md gives
    both figures): the reduce-scatters of the last layers finish after the backward, and the
    gathers share the link."""
    return overlapped_exposed_s(2 * gather_s, compute_s, comm_sm_share) + reduce_scatter_s


def parameter_tensors(spec: ModelSpec, *, blocks: int, first: bool, last: bool) -> int:
    """Parameter tensors one GPU of a stage holds, as model/layers.py builds them: per block the
    norms (weight, and bias for LayerNorm), QKV (+ bias), the output projection (+ bias), QK-norms,
    the MLP (gated: gate_up and down; else fc1 and fc2 with biases); the token embedding (and
    learned positions) on the first stage, the final norm and an untied head on the last. (An MoE
    layer's experts are counted as one MLP.)"""
    norm = 1 if spec.rms_norm else 2
    per_block = spec.block_norms * norm + (1 + bool(spec.qkv_bias)) + (1 + bool(spec.biases))
    per_block += 2 if spec.qk_norm else 0
    per_block += 2 if spec.gated_mlp else 2 + 2 * bool(spec.biases)
    count = blocks * per_block
    if first:
        count += 1 + (0 if spec.rotary else 1)
    if last:
        count += norm + (0 if spec.tied_embeddings else 1)
    return count


def zero_host_time_s(tensors: int, zero_stage: int, engine: Engine) -> float:
    """Host time an engine's ZeRO stage adds to one micro-batch: its per-tensor figure
    (engines.Engine.zero_tensor_us) x the parameter tensors the GPU holds."""
    return tensors * dict(engine.zero_tensor_us).get(zero_stage, 0.0) * 1e-6


def offload_transfer_bytes(partition_params: float, precision: Precision, offload: str,
                           micro_batches: int) -> float:
    """Bytes one GPU moves over its host link per step under ZeRO-Offload (Ren et al. 2021, Section
    4: gradients go to the CPU, updated weights come back), partition = Psi/N in the model dtype:
    the reduced gradient partition accumulates in a pinned CPU buffer (DeepSpeed 0.19
    runtime/zero/stage3.py: grad_partitions_flat_buffer on the offload device), so the first
    micro-batch copies it down and every later one copies the buffer up, adds on the GPU ("adding
    directly to cpu is very slow") and copies it back down: (2m - 1) partitions; then the updated
    weight partition up once; with the parameters offloaded (ZeRO-Infinity, Rajbhandari et al. 2021)
    the weight partition also comes up before every micro-batch's forward and backward."""
    if offload == "none":
        return 0.0
    g = precision.weight_bytes
    moved = (2 * micro_batches - 1) * partition_params * g + partition_params * g
    if offload == "optimizer+params":
        moved += 2 * micro_batches * partition_params * g
    return moved


def host_link_time_s(nbytes: float, host_link_gb_per_s: float) -> float:
    """A copy between GPU and CPU memory: N / B, B the link's bandwidth per direction (PCIe)."""
    return nbytes / (host_link_gb_per_s * GB)


def cpu_adam_time_s(partition_params: float, precision: Precision,
                    host_memory_gb_per_s: float) -> float:
    """DeepSpeed's CPU Adam on the offloaded partition: memory-bound like Adam on the GPU
    (optimizer_time_s's bytes per parameter: fp32 master, m, v read and written, the gradient read,
    the low-precision copy written) at the CPU memory bandwidth one GPU's rank gets."""
    return optimizer_time_s(partition_params, precision, host_memory_gb_per_s * GB)
