"""Communication and schedule formulas."""
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


def test_megatron_scatter_gather_send_hand_value():
    """Narayanan et al. 2021 §4.1: a middle stage of GPT-3 (T = 2048, h = 12288, fp16: 50.3 MB)
    at t = 8 across nodes sends 1/8 over the 22 GB/s NIC and all-gathers over 230 GB/s NVLink, each
    way: 2 x [(2 us + 6.29 MB / 22 GB/s) + (7 x 2 us + 7/8 x 50.3 MB / 230 GB/s)]; DeepSpeed sends
    the whole tensor; an asynchronous engine hides it."""
    from llmlaunch.topology.engines import ENGINES
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.step_time import pipeline_send_time_s

    a100 = gpu("a100-80gb")
    message = 2048 * 12288 * 2
    kw = dict(first=False, last=False, pp=8, tp=8, tokens=2048, hidden=12288, act=2,
              virtual_stages=1, sequence_parallel=False, gpu=a100, pp_spans_nodes=True)
    expected = 2 * ((2e-6 + message / 8 / 22e9) + (7 * 2e-6 + 7 / 8 * message / 230e9))
    assert pipeline_send_time_s(engine=ENGINES["megatron-lm-2021"], **kw) == pytest.approx(expected)
    assert pipeline_send_time_s(engine=ENGINES["megatron-deepspeed"], **kw) == pytest.approx(
        2 * (2e-6 + message / 22e9))
    assert pipeline_send_time_s(engine=ENGINES["llama3"], **kw) == 0.0


def test_tensor_parallel_backward_overlaps_the_gemms_it_can():
    """Without SP, per block: 2 all-reduces forward, 2 backward; Megatron-LM 2022 runs each backward
    one beside the weight-gradient GEMM of QKV / MLP-in, so only what exceeds the GEMM shows. With
    SP: 4 reduce-scatters/all-gathers forward, 2 all-gathers backward for the row-parallel layers,
    and the column-parallel ones' reduce-scatter and re-run all-gather beside their GEMMs."""
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.step_time import allgather_time_s, tp_collective_time_s

    a100 = gpu("a100-80gb")
    ar = allreduce_time_s(8192 * 6144 * 2, 8, 230, 2e-6)
    half = allgather_time_s(8192 * 6144 * 2, 8, 230, 2e-6)
    kw = dict(blocks=1, first=False, last=False, tp=8, tokens=8192, hidden=6144, act=2,
              recompute="none", gpu=a100, spans_nodes=False)
    gemm_s = (1e-3, 0.5e-3, 1e-3, 0.2e-3)      # QKV data, QKV weight, MLP-in data, MLP-in weight
    assert tp_collective_time_s(sequence_parallel=False, overlap_s=gemm_s, overlap=False, **kw) == \
        pytest.approx(4 * ar)
    assert tp_collective_time_s(sequence_parallel=False, overlap_s=gemm_s, overlap=True, **kw) == \
        pytest.approx(2 * ar + (ar - 0.5e-3) + (ar - 0.2e-3))
    assert tp_collective_time_s(sequence_parallel=True, overlap_s=gemm_s, overlap=True, **kw) == \
        pytest.approx(6 * half + sum(max(0.0, half - g) for g in gemm_s))
    assert half < 0.5e-3 and half > 0.2e-3     # only the MLP-in weight GEMM is too short to hide it
    full = tp_collective_time_s(sequence_parallel=False, overlap_s=gemm_s, overlap=False,
                                **{**kw, "recompute": "full"})
    assert full == pytest.approx(6 * ar)


def test_gradient_accumulation_and_optimizer_passes_per_engine():
    """DeepSpeed's BF16_Optimizer moves 20 bytes a parameter each micro-batch and 12 more at the
    step; Megatron-LM 2021's fp16 local DDP 6 and 24; fp32 autograd accumulation 12."""
    from llmlaunch.topology.engines import ENGINES
    from llmlaunch.topology.memory import PRECISIONS
    from llmlaunch.topology.step_time import grad_accumulation_bytes, optimizer_time_s

    assert grad_accumulation_bytes(ENGINES["deepspeed"], PRECISIONS["bf16"]) == 20
    assert grad_accumulation_bytes(ENGINES["megatron-lm-2021"], PRECISIONS["bf16-megatron"]) == 6
    assert grad_accumulation_bytes(ENGINES["megatron-lm-2022"], PRECISIONS["bf16-megatron"]) == 0
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
