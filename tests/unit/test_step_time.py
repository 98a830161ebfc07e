"""Communication and schedule formulas."""
import math

import pytest

from llmlaunch.topology.step_time import (allgather_time_s, allreduce_time_s, bubble_fraction,
                                          bubble_ratio, pipeline_time_s)


def test_ring_allreduce_hand_value():
    # 1 GB over 8 GPUs at 100 GB/s bus bandwidth: 2 * 7/8 * 1 / 100 = 17.5 ms
    assert allreduce_time_s(1e9, 8, 100) == pytest.approx(0.0175)
    assert allgather_time_s(1e9, 8, 100) == pytest.approx(0.00875)
    assert allreduce_time_s(1e9, 1, 100) == 0.0


def test_bubble_fraction_and_narayanan_ratio():
    # p = 8 stages, m = 96 micro-batches: idle 7/103 of the step; (p-1)/m = 7/96 of ideal time
    assert bubble_fraction(8, 96) == pytest.approx(7 / 103)
    assert bubble_ratio(8, 96) == pytest.approx(7 / 96)
    assert bubble_fraction(1, 10) == 0.0


def test_pipeline_time_equal_stages_is_m_plus_p_minus_1():
    assert pipeline_time_s([2.0] * 4, 8) == pytest.approx((8 + 4 - 1) * 2.0)
    # a slow stage dominates the steady state
    assert pipeline_time_s([1.0, 3.0], 5) == pytest.approx(4 * 3.0 + 4.0)


def test_interleaving_shrinks_the_bubble_v_fold():
    # Narayanan et al. 2021, Section 2.2.2: bubble ratio (p - 1)/(v m)
    assert bubble_ratio(8, 96, 4) == pytest.approx(7 / (4 * 96))
    assert bubble_fraction(8, 96, 4) == pytest.approx(7 / (4 * 96 + 7))
    # equal stages: (m + (p - 1)/v) T
    assert pipeline_time_s([2.0] * 4, 8, 3) == pytest.approx((8 + 3 / 3) * 2.0)


def test_alpha_beta_latency_terms_hand_values():
    from llmlaunch.topology.step_time import p2p_time_s

    # 8 GPUs, alpha 2 us: a ring all-reduce takes 2 * 7 = 14 messages -> 28 us on top of the bytes
    assert allreduce_time_s(1e9, 8, 100, 2e-6) == pytest.approx(0.0175 + 28e-6)
    assert allgather_time_s(1e9, 8, 100, 2e-6) == pytest.approx(0.00875 + 14e-6)
    # a 4-byte all-reduce is all latency
    assert allreduce_time_s(4, 2, 100, 1e-4) == pytest.approx(2e-4, rel=1e-6)
    assert allreduce_time_s(4, 1, 100, 1e-4) == 0.0
    # one send: alpha + N / B
    assert p2p_time_s(1e6, 1, 5e-5) == pytest.approx(5e-5 + 1e-3)


def test_host_and_device_overlap_on_gpu_add_on_cpu():
    from llmlaunch.topology.step_time import host_time_s, pass_time_s

    assert host_time_s(1000, 6e-6) == pytest.approx(6e-3)
    assert pass_time_s(device_s=2e-3, host_s=6e-3, async_dispatch=True) == pytest.approx(6e-3)
    assert pass_time_s(device_s=9e-3, host_s=6e-3, async_dispatch=True) == pytest.approx(9e-3)
    assert pass_time_s(device_s=2e-3, host_s=6e-3, async_dispatch=False) == pytest.approx(8e-3)


def test_small_model_on_a_big_gpu_is_host_bound_and_a_big_one_is_not():
    """GPT-3 125M at micro-batch 1 of 1024 tokens on one H100: 1299 ops at 6 us plus DeepSpeed's
    3 pipeline instructions at 96 us (8.082 ms) outlast its GEMMs and memory-bound kernels; GPT-3
    175B's stage at micro-batch 1 of 2048 is device-bound, so its estimate is unchanged by the
    overhead term."""
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.memory import PRECISIONS
    from llmlaunch.topology.shapes import preset
    from llmlaunch.topology.op_counts import stage_ops_per_micro_batch
    from llmlaunch.topology.step_time import stage_micro_batch_time

    h100 = gpu("h100-80gb")
    small = preset("gpt3-125m")
    kwargs = dict(first=True, last=True, tp=1, pp=1, micro_batch=1, recompute="none",
                  tp_spans_nodes=False, pp_spans_nodes=False)
    t = stage_micro_batch_time(small, h100, PRECISIONS["bf16"], blocks=small.layers, seq_len=1024,
                               **kwargs)
    ops = stage_ops_per_micro_batch(small, blocks=small.layers, first=True, last=True, recompute="none")
    assert ops == 12 * 102 + 18 + 57
    assert t.compute_s == pytest.approx(ops * 6e-6 + 3 * 96e-6) and t.host_bound
    big = preset("gpt3-175b")
    t_big = stage_micro_batch_time(big, h100, PRECISIONS["bf16"], blocks=12, **kwargs)
    no_overhead = stage_micro_batch_time(big, gpu("h100-80gb", op_overhead_us=0), PRECISIONS["bf16"],
                                         blocks=12, **kwargs)
    assert t_big.compute_s == no_overhead.compute_s and not t_big.host_bound


# A100 node, nccl-tests all_reduce_perf busbw (stas00/ml-engineering network/README.md): 32 MiB
# 138.49 GB/s, 64 MiB 171.54, 128 MiB 176.92; gpus.yaml's a100 allreduce_busbw.
BW_32M, BW_64M, BW_128M = 138.49, 171.54, 176.92


def test_bus_bandwidth_read_off_the_measured_curve():
    """At a measured size, its figure; between two, log-linear (at 1.5 x 32 MiB the bandwidth is
    138.49 x (171.54 / 138.49) ** log2 1.5); below the smallest size, that size's time; past the
    largest, its bandwidth."""
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.step_time import bus_gb_per_s

    curve = gpu("a100-80gb").allreduce_busbw
    assert bus_gb_per_s(2 ** 25, curve) == pytest.approx(BW_32M)
    assert bus_gb_per_s(1.5 * 2 ** 25, curve) == pytest.approx(
        BW_32M * (BW_64M / BW_32M) ** math.log2(1.5))
    assert bus_gb_per_s(2 ** 14, curve) == pytest.approx(1.31 / 2)     # 32 KiB's 43.8 us
    assert bus_gb_per_s(2 ** 40, curve) == pytest.approx(234.89)


def test_node_collectives_at_their_buffers_bus_bandwidth():
    """Korthikanti's 22B at micro-batch 4 (T = 8192, h = 6144, fp16: 96 MiB) on 8 A100s: the
    all-reduce moves 2 x 7/8 of it at the 96 MiB bus bandwidth; a reduce-scatter or all-gather
    7/8; without a measured curve, the alpha-beta ring at intra_node_gb_per_s."""
    import dataclasses

    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.step_time import node_collective_time_s

    a100 = gpu("a100-80gb")
    n = 8192 * 6144 * 2
    bus = BW_64M * (BW_128M / BW_64M) ** math.log2(1.5)
    assert node_collective_time_s("all-reduce", n, 8, a100) == pytest.approx(2 * 7 / 8 * n / (bus * 1e9))
    assert node_collective_time_s("all-gather", n, 8, a100) == pytest.approx(7 / 8 * n / (bus * 1e9))
    assert node_collective_time_s("all-reduce", n, 1, a100) == 0.0
    flat = dataclasses.replace(a100, allreduce_busbw=())
    assert node_collective_time_s("all-reduce", n, 8, flat) == pytest.approx(allreduce_time_s(n, 8, 230, 2e-6))
    with pytest.raises(ValueError, match="not all-reduce, reduce-scatter or all-gather"):
        node_collective_time_s("broadcast", n, 8, a100)


def test_an_overlapped_collective_takes_its_sms_from_the_gemm():
    """NCCL's 24 channels hold 24 of the A100's 108 SMs: a 1 ms all-reduce beside a 0.845 ms GEMM
    lets the GEMM do 1 x 84/108 ms of its work meanwhile, so the pair takes 1 + (0.845 - 0.7778) ms:
    0.2222 ms beyond the GEMM; beside a 0.5 ms GEMM the collective shows 0.5 ms; free overlap
    (share 0) shows only what exceeds the GEMM."""
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.step_time import comm_sm_share, overlapped_exposed_s

    share = comm_sm_share(gpu("a100-80gb"))
    assert share == pytest.approx(24 / 108)
    assert overlapped_exposed_s(1e-3, 0.845e-3, share) == pytest.approx(1e-3 * 24 / 108)
    assert overlapped_exposed_s(1e-3, 0.5e-3, share) == pytest.approx(0.5e-3)
    assert overlapped_exposed_s(1e-3, 0.845e-3, 0.0) == pytest.approx(0.155e-3)
    assert overlapped_exposed_s(1e-3, 2e-3, 0.0) == 0.0
    assert comm_sm_share(gpu("h100-80gb")) == 0.0        # channels not known: overlap free


def test_megatron_scatter_gather_send_hand_value():
    """Narayanan et al. 2021 §4.1: a middle stage of GPT-3 (T = 2048, h = 12288, fp16: 48 MiB)
    at t = 8 across nodes sends 1/8 over the 22 GB/s NIC and all-gathers the 48 MiB over NVLink at
    its measured bus bandwidth, each way: 2 x [(2 us + 6.29 MB / 22 GB/s) + 7/8 x 48 MiB / B(48 MiB)];
    DeepSpeed sends the whole tensor; an asynchronous engine hides it."""
    from llmlaunch.topology.engines import ENGINES
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.step_time import pipeline_send_time_s

    a100 = gpu("a100-80gb")
    message = 2048 * 12288 * 2
    bus = BW_32M * (BW_64M / BW_32M) ** math.log2(1.5)
    kw = dict(first=False, last=False, pp=8, tp=8, tokens=2048, hidden=12288, act=2,
              virtual_stages=1, sequence_parallel=False, gpu=a100, pp_spans_nodes=True)
    expected = 2 * ((2e-6 + message / 8 / 22e9) + 7 / 8 * message / (bus * 1e9))
    assert pipeline_send_time_s(engine=ENGINES["megatron-lm-2021"], **kw) == pytest.approx(expected)
    assert pipeline_send_time_s(engine=ENGINES["megatron-deepspeed"], **kw) == pytest.approx(
        2 * (2e-6 + message / 22e9))
    assert pipeline_send_time_s(engine=ENGINES["llama3"], **kw) == 0.0


def test_tensor_parallel_backward_overlaps_the_gemms_it_can():
    """Without SP, per block: 2 all-reduces forward, 2 backward; Megatron-LM 2022 runs each backward
    one beside the weight-gradient GEMM of QKV / MLP-in, which loses NCCL's SMs meanwhile
    (overlapped_exposed_s). With SP: 4 reduce-scatters/all-gathers forward, 2 all-gathers backward
    for the row-parallel layers, and the column-parallel ones' reduce-scatter and re-run all-gather
    beside their GEMMs."""
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.step_time import (node_collective_time_s, overlapped_exposed_s,
                                              tp_collective_time_s)

    a100 = gpu("a100-80gb")
    share = 24 / 108
    ar = node_collective_time_s("all-reduce", 8192 * 6144 * 2, 8, a100)
    half = node_collective_time_s("all-gather", 8192 * 6144 * 2, 8, a100)
    kw = dict(blocks=1, first=False, last=False, tp=8, tokens=8192, hidden=6144, act=2,
              recompute="none", gpu=a100, spans_nodes=False)
    gemm_s = (1e-3, 0.5e-3, 1e-3, 0.2e-3)      # QKV data, QKV weight, MLP-in data, MLP-in weight
    assert tp_collective_time_s(sequence_parallel=False, overlap_s=gemm_s, overlap=False, **kw) == \
        pytest.approx(4 * ar)
    # 1.01 ms all-reduces: beside 0.5 ms and 0.2 ms GEMMs, longer than 0.78 of either
    assert tp_collective_time_s(sequence_parallel=False, overlap_s=gemm_s, overlap=True, **kw) == \
        pytest.approx(2 * ar + (ar - 0.5e-3) + (ar - 0.2e-3))
    assert tp_collective_time_s(sequence_parallel=True, overlap_s=gemm_s, overlap=True, **kw) == \
        pytest.approx(6 * half + sum(overlapped_exposed_s(half, g, share) for g in gemm_s))
    assert half * (1 - share) < 1e-3 and half * (1 - share) > 0.2e-3
    full = tp_collective_time_s(sequence_parallel=False, overlap_s=gemm_s, overlap=False,
                                **{**kw, "recompute": "full"})
    assert full == pytest.approx(6 * ar)


def test_gradient_accumulation_and_optimizer_passes_per_engine():
    """DeepSpeed's BF16_Optimizer moves 20 bytes a parameter each micro-batch and 12 more at the
    step; Megatron-LM 2021's fp16 local DDP 6 and 24 (2022's too); fp32 autograd accumulation 12."""
    from llmlaunch.topology.engines import ENGINES
    from llmlaunch.topology.memory import PRECISIONS
    from llmlaunch.topology.step_time import grad_accumulation_bytes, optimizer_time_s

    assert grad_accumulation_bytes(ENGINES["deepspeed"], PRECISIONS["bf16"]) == 20
    assert grad_accumulation_bytes(ENGINES["megatron-lm-2021"], PRECISIONS["bf16-megatron"]) == 6
    # 2022: fp16 keeps the add; fused (fp32 accumulation) the epilogue reads and writes fp32: +6
    assert grad_accumulation_bytes(ENGINES["megatron-lm-2022"], PRECISIONS["bf16-megatron"]) == 6
    assert grad_accumulation_bytes(ENGINES["deepspeed"], PRECISIONS["fp32"]) == 12
    # AdamW with fp32 master: 24 (master, m, v read and written) + 4 (grad) + 2 (bf16 copy) = 30
    assert optimizer_time_s(1e9, PRECISIONS["bf16"], 1e12) == pytest.approx(0.030)
    assert optimizer_time_s(1e9, PRECISIONS["bf16"], 1e12, 24) == pytest.approx(0.054)


def test_deepspeed_instructions_per_micro_batch():
    from llmlaunch.topology.engines import instructions_per_micro_batch

    assert instructions_per_micro_batch(True, True, 1) == 3       # load, forward, backward
    assert instructions_per_micro_batch(True, False, 4) == 5      # + send act, recv grad
    assert instructions_per_micro_batch(False, False, 4) == 6     # recv/send both ways
    assert instructions_per_micro_batch(False, True, 4) == 5      # load labels, recv act, send grad


def test_unknown_engine_is_one_line():
    from llmlaunch.topology.engines import engine

    with pytest.raises(ValueError, match="engine 'jax' is unknown; use one of deepspeed"):
        engine("jax")


def test_tied_embedding_and_data_parallel_gradient_bytes():
    """gpt2's tied table, 51200 x 12288 / 8 on this rank, fp32 gradients between the first and last
    stages across nodes: a two-rank ring all-reduce, 2 alpha + N / B; the data-parallel reduction
    sends the engine's gradient bytes (Megatron-LM's fp16: 2) instead of the precision's 4."""
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.memory import PRECISIONS
    from llmlaunch.topology.step_time import data_parallel_time_s, tied_embedding_time_s

    a100 = gpu("a100-80gb")
    params = 51200 * 12288 / 8
    assert tied_embedding_time_s(params, PRECISIONS["bf16-megatron"], a100, spans_nodes=True) == \
        pytest.approx(2 * 2e-6 + params * 4 / 22e9)
    fp32 = data_parallel_time_s(1e9, PRECISIONS["bf16-megatron"], a100, dp=8, zero_stage=0,
                                dp_spans_nodes=True)
    fp16 = data_parallel_time_s(1e9, PRECISIONS["bf16-megatron"], a100, dp=8, zero_stage=0,
                                dp_spans_nodes=True, grad_bytes=2)
    assert fp32 == pytest.approx(14 * 2e-6 + 2 * 7 / 8 * 4e9 / 22e9)
    assert fp16 == pytest.approx(14 * 2e-6 + 2 * 7 / 8 * 2e9 / 22e9)


def test_zero_traffic_per_micro_batch_is_3_psi_at_stage_3():
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.memory import PRECISIONS
    from llmlaunch.topology.zero_time import zero_micro_batch_bytes, zero_micro_batch_time_s

    bf16 = PRECISIONS["bf16"]
    # Rajbhandari et al. 2020 Section 7.2.2: ZeRO-3 moves 3 Psi (two gathers, one reduce-scatter),
    # ZeRO-2 Psi per micro-batch (its all-gather is once per step); 1e9 bf16 parameters = 2e9 bytes
    assert zero_micro_batch_bytes(1e9, bf16, 3) == 6e9
    assert zero_micro_batch_bytes(1e9, bf16, 2) == 2e9
    assert zero_micro_batch_bytes(1e9, bf16, 1) == 0.0
    # across nodes on a100-80gb (22 GB/s per GPU, 2 us per message), dp 8, one ring half of 2e9
    # bytes: 7 * 2e-6 + 7/8 * 2e9 / 22e9 = 0.079559 s; ZeRO-3 three of them
    half = 7 * 2e-6 + 7 / 8 * 2e9 / 22e9
    a100 = gpu("a100-80gb")
    assert zero_micro_batch_time_s(1e9, bf16, a100, dp=8, zero_stage=3, dp_spans_nodes=True) == \
        pytest.approx(3 * half)
    assert zero_micro_batch_time_s(1e9, bf16, a100, dp=8, zero_stage=2, dp_spans_nodes=True) == \
        pytest.approx(half)


def test_zero3_exposure_hides_gathers_behind_compute_not_the_reduce_scatter():
    from llmlaunch.topology.zero_time import zero3_exposed_s

    assert zero3_exposed_s(1.0, 0.5, 1.5) == pytest.approx(1.0)    # 2 - 1.5 + 0.5
    assert zero3_exposed_s(1.0, 0.5, 4.0) == pytest.approx(0.5)    # only the reduce-scatter
    # NCCL's channels hold 1/4 of the SMs while the 2 s of gathers run: the compute under them
    # advances 1.5 s instead of 2 (collectives.overlapped_exposed_s): 0.5 s more, plus the 0.5 s
    # reduce-scatter
    assert zero3_exposed_s(1.0, 0.5, 4.0, 0.25) == pytest.approx(1.0)
    assert zero3_exposed_s(1.0, 0.5, 4.0, 0.25) > zero3_exposed_s(1.0, 0.5, 4.0)


def test_offload_copies_and_cpu_adam_hand_values():
    from llmlaunch.topology.memory import PRECISIONS
    from llmlaunch.topology.zero_time import (cpu_adam_time_s, host_link_time_s,
                                              offload_transfer_bytes)

    bf16 = PRECISIONS["bf16"]
    # a 1e9-parameter partition, 4 micro-batches: the gradient partition accumulates in a CPU
    # buffer (DeepSpeed stage3.py grad_partitions_flat_buffer): down after the first, up and down
    # again after each of the other 3 (the add runs on the GPU): 7 x 2e9; weights up 2e9
    assert offload_transfer_bytes(1e9, bf16, "optimizer", 4) == 16e9
    assert offload_transfer_bytes(1e9, bf16, "optimizer", 1) == 4e9
    # parameters offloaded: the partition also comes up for each forward and backward, 8 x 2e9
    assert offload_transfer_bytes(1e9, bf16, "optimizer+params", 4) == 32e9
    assert offload_transfer_bytes(1e9, bf16, "none", 4) == 0.0
    assert host_link_time_s(31.5e9, 31.5) == pytest.approx(1.0)       # PCIe Gen4 x16, 1 s
    # CPU Adam: 30 bytes a parameter (fp32 master, m, v read + written 24, fp32 gradient read 4,
    # bf16 weight written 2) at DGX A100's 51.2 GB/s per GPU: 30e9 / 51.2e9 s
    assert cpu_adam_time_s(1e9, bf16, 51.2) == pytest.approx(30 / 51.2)


def test_zero_host_time_per_parameter_tensor():
    from llmlaunch.topology.engines import ENGINES
    from llmlaunch.topology.shapes import preset
    from llmlaunch.topology.zero_time import parameter_tensors, zero_host_time_s

    # llama2-70b on one stage: 80 blocks x (2 RMSNorms + qkv + out + gate_up + down) = 480, the
    # token embedding, the final norm and the untied head: 483 tensors
    tensors = parameter_tensors(preset("llama2-70b"), blocks=80, first=True, last=True)
    assert tensors == 483
    deepspeed = ENGINES["deepspeed"]
    # benchmarks/zero_overhead.py: 323 us a tensor a micro-batch at ZeRO-3, 218 at ZeRO-2
    assert zero_host_time_s(tensors, 3, deepspeed) == pytest.approx(483 * 323e-6)
    assert zero_host_time_s(tensors, 2, deepspeed) == pytest.approx(483 * 218e-6)
    assert zero_host_time_s(tensors, 1, deepspeed) == 0.0
    assert zero_host_time_s(tensors, 3, ENGINES["megatron-lm-2021"]) == 0.0
