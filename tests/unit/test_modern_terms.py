"""The terms issue 23 added for today's runs, each pinned to a hand-computed value: FP8's casts and
weight copies (fp8.py), the fused and torchtitan activation policies (activations.py), Megatron-
Core's bucketed and FSDP's per-block data-parallel overlap (dp_time.py), the GEMM waves' fixed
time (gemm_model.py) and the sustained clock (step_time.py)."""
import pytest

from llmlaunch.topology.activations import (activation_bytes_per_layer, matmul_outputs,
                                            torchtitan_selective_bytes)
from llmlaunch.topology.dp_time import (bucketed_exposed_s, fsdp_exposed_s, mcore_bucket_params,
                                        mcore_dp_exposed_s)
from llmlaunch.topology.fp8 import (fp8_cast_bytes_per_token, fp8_cast_elements_per_token,
                                    fp8_gemm_gpu, fp8_weight_cast_bytes, fp8_weight_copy_bytes)
from llmlaunch.topology.gemm_model import compute_time_s, wave_overhead_s, waves
from llmlaunch.topology.gemms import Gemm
from llmlaunch.topology.hardware import gpu
from llmlaunch.topology.shapes import preset

LLAMA3_8B = preset("llama3-8b")     # h 4096, q 4096, 8 KV heads of 128 (1024), f 14336, 32 heads


# ---- FP8 -----------------------------------------------------------------------------------

def test_fp8_cast_elements_and_bytes_hand_values():
    """Per token and block at tp 1: forward inputs of QKV, out-projection, up/gate and down,
    4096 + 4096 + 4096 + 14336 = 26624; backward output gradients of QKV (4096 + 2 x 1024), the
    out-projection 4096, up and gate 2 x 14336, down 4096 = 43008. Current scaling moves 6 bytes
    an element (read, amax re-read, two FP8 layouts written), delayed 4."""
    assert fp8_cast_elements_per_token(LLAMA3_8B, 1) == 26624 + 43008
    assert fp8_cast_bytes_per_token(LLAMA3_8B, 1) == 6 * 69632
    assert fp8_cast_bytes_per_token(LLAMA3_8B, 1, "delayed") == 4 * 69632
    assert fp8_cast_bytes_per_token(LLAMA3_8B, 1, "block") == pytest.approx((4 + 2 / 32) * 69632)
    # tp 2 halves the sharded widths, not the replicated h inputs
    assert fp8_cast_elements_per_token(LLAMA3_8B, 2) == (4096 + 2048 + 4096 + 7168) + (
        3072 + 4096 + 14336 + 4096)
    with pytest.raises(ValueError, match="FP8 recipe 'mx' is not one of delayed, current, block"):
        fp8_cast_bytes_per_token(LLAMA3_8B, 1, "mx")


def test_fp8_weight_copies_and_casts():
    """Transformer Engine keeps an FP8 weight and its transpose (2 bytes a parameter) and casts
    them once a step (6 bytes a parameter under current scaling); with FP8 primary weights the copy
    replaces the bf16 one; torchao casts at every use, forward and backward."""
    assert fp8_weight_copy_bytes(1e9, "te") == 2e9
    assert fp8_weight_copy_bytes(1e9, "te-fp8-params") == 0
    assert fp8_weight_copy_bytes(1e9, "torchao") == 0
    assert fp8_weight_cast_bytes(1e9, "te", per_micro_batch=False) == 6e9
    assert fp8_weight_cast_bytes(1e9, "te", per_micro_batch=True) == 0
    assert fp8_weight_cast_bytes(1e9, "torchao", per_micro_batch=True) == 12e9


def test_fp8_gpu_view_and_refusal():
    h100 = fp8_gemm_gpu(gpu("h100-80gb"))
    assert (h100.peak_tflops, h100.matmul_efficiency) == (1979, 0.73)
    with pytest.raises(ValueError, match="a100-80gb has no FP8 tensor cores"):
        fp8_gemm_gpu(gpu("a100-80gb"))


# ---- activations -------------------------------------------------------------------------

def test_torchtitan_selective_ac_hand_value():
    """torchtitan's op-level SAC keeps the block input, every other matmul output (wq 4096, wv
    1024, w1 14336, w2 4096 of wq wk wv wo w1 w3 w2) and the flash output (4096) in bf16, and the
    fp32 log-sum-exp of 32 heads: 2 (4096 + 23552 + 4096) + 128 = 63616 bytes a token; local batch
    2 x 8192 tokens: 0.971 GiB a block (31.1 GiB for 32 blocks)."""
    assert [w for w, _ in matmul_outputs(LLAMA3_8B)] == [4096, 1024, 1024, 4096, 14336, 14336, 4096]
    per_block = torchtitan_selective_bytes(LLAMA3_8B, 16384, 1, 2)
    assert per_block == 16384 * 63616
    assert activation_bytes_per_layer(LLAMA3_8B, 2, 1, "selective", policy="torchtitan",
                                      seq_len=8192) == per_block


def test_fused_policy_hand_values():
    """Korthikanti's terms for fused kernels, Llama 3 8B, b 1, s 8192, bf16, flash: norm inputs and
    the QKV and MLP inputs 4 x 2 x 4096, Q K V 2 x 6144, attention output 2 x 4096, the fused
    SwiGLU's 3f 2 x 43008, the log-sum-exp 4 x 32: 139392 bytes a token. Under FP8 (Transformer
    Engine) the QKV and MLP inputs, the out-projection's and the down projection's inputs are saved
    as 1-byte copies: 120960. cp 2 halves the tokens a rank keeps."""
    fused = activation_bytes_per_layer(LLAMA3_8B, 1, 1, "none", policy="fused", seq_len=8192)
    assert fused == 8192 * 139392
    assert activation_bytes_per_layer(LLAMA3_8B, 1, 1, "none", policy="fused", seq_len=8192,
                                      fp8=True) == 8192 * 120960
    assert activation_bytes_per_layer(LLAMA3_8B, 1, 1, "none", policy="fused", seq_len=8192,
                                      cp=2) == fused / 2
    with pytest.raises(ValueError, match="activation policy 'x' is not one of"):
        activation_bytes_per_layer(LLAMA3_8B, 1, 1, "none", policy="x")


# ---- data-parallel overlap ---------------------------------------------------------------

def test_mcore_buckets_and_exposure_hand_values():
    """Buckets of max(40M, 1M x dp) parameters; a bucketed collective shows its last bucket and
    whatever exceeds the compute window. 1e9 parameters over dp 8 at 100 GB/s: the reduce-scatter of 4e9 bytes of fp32 gradients takes 7/8 x 0.04 = 0.035 s, the bf16 gather
    0.0175 s; behind 0.03 s of backward and 0.015 s of forward: 0.005 + 0.0025 s show."""
    assert mcore_bucket_params(8) == 40_000_000
    assert mcore_bucket_params(64) == 64_000_000
    assert bucketed_exposed_s(1.0, 0.1, 0.5) == 0.5
    assert bucketed_exposed_s(1.0, 0.1, 2.0) == 0.1
    assert bucketed_exposed_s(0.0, 0.1, 2.0) == 0.0
    # NCCL holding a quarter of the SMs: the window covers 0.75 of the collective's time
    assert bucketed_exposed_s(1.0, 0.1, 2.0, 0.25) == pytest.approx(0.25)
    exposed = mcore_dp_exposed_s(1e9, grad_bytes=4, weight_bytes=2, dp=8, distributed_optimizer=True,
                                 compute_s=0.045, bw_gb_per_s=100, latency_s=0.0)
    assert exposed == pytest.approx(0.005 + 0.0025)
    # without the distributed optimizer: an all-reduce (2 x the bytes) and no gather
    assert mcore_dp_exposed_s(1e9, grad_bytes=4, weight_bytes=2, dp=8, distributed_optimizer=False,
                              compute_s=0.045, bw_gb_per_s=100, latency_s=0.0) == pytest.approx(0.04)
    assert mcore_dp_exposed_s(1e9, grad_bytes=4, weight_bytes=2, dp=1, distributed_optimizer=True,
                              compute_s=0.0, bw_gb_per_s=100, latency_s=0.0) == 0.0


def test_fsdp_exposure_hand_values():
    """FULL_SHARD, 8 ranks at 100 GB/s, a stage of 1e9 parameters in blocks of 2e8 (root 1e8):
    bf16 gathers 7/8 x 2e9 / 1e11 = 0.0175 s, fp32 reduce-scatters 0.035 s, one block's gather
    0.0035 s and reduce-scatter 0.007 s show whole (first and last); behind 0.03 s of compute
    (0.01 forward, 0.02 backward) the rest shows past it: (0.0175 - 0.0035 - 0.01) +
    (0.0175 + 0.035 - 0.007 - 0.02) = 0.004 + 0.0255."""
    args = dict(gather_bytes=2, reduce_bytes=4, dp=8, compute_s=0.03, bw_gb_per_s=100,
                latency_s=0.0)
    full = fsdp_exposed_s(2e8, 1e8, 1e9, zero_stage=3, reshard_after_forward=True, **args)
    assert full == pytest.approx(0.0035 + 0.007 + 0.004 + 0.0255)
    # SHARD_GRAD_OP gathers once a micro-batch: the backward has only its reduce-scatters
    grad_op = fsdp_exposed_s(2e8, 1e8, 1e9, zero_stage=2, reshard_after_forward=True, **args)
    assert grad_op == pytest.approx(0.0035 + 0.007 + 0.004 + (0.035 - 0.007 - 0.02))


def test_fsdp_float8_all_gather_hand_values():
    """torchao's Float8 all-gather (engine fsdp-compile-float8-gather): the same FULL_SHARD stage
    with 8e8 of its parameters in linear layers (1.5e8 of a block's) gathers those in 1 byte:
    7/8 x (2e8 x 2 + 8e8 x 1) / 1e11 = 0.0105 s a pass; the first gather is a block's,
    7/8 x (5e7 x 2 + 1.5e8) / 1e11 = 0.0021875 s (the bf16 root's is 0.00175 s); the forward hides
    the rest (0.0083125 < 0.01), the backward shows 0.0105 + 0.035 - 0.007 - 0.02 = 0.0185."""
    from llmlaunch.topology.engines import ENGINES

    args = dict(gather_bytes=2, reduce_bytes=4, dp=8, compute_s=0.03, bw_gb_per_s=100,
                latency_s=0.0)
    fp8 = fsdp_exposed_s(2e8, 1e8, 1e9, zero_stage=3, reshard_after_forward=True,
                         fp8_linear=(1.5e8, 8e8), **args)
    assert fp8 == pytest.approx(0.0021875 + 0.007 + 0.0 + 0.0185)
    assert ENGINES["fsdp-compile-float8-gather"].fsdp_fp8_all_gather
    assert not any(e.fsdp_fp8_all_gather for name, e in ENGINES.items()
                   if name != "fsdp-compile-float8-gather")


def test_fsdp_does_not_gather_experts_it_does_not_shard():
    """An MoE stage under FSDP with ep = dp (expert-data-parallel degree 1): the routed experts
    (here 5e8 of the stage's 1e9 parameters, 1e8 of a block's 2e8) are neither gathered nor
    reduce-scattered. Over 8 ranks at 100 GB/s: gathers 7/8 x 5e8 x 2 / 1e11 = 0.00875 s,
    reduce-scatters 0.0175 s; first and last a block's (or the root's) 0.00175 and 0.0035 s; the
    forward hides the rest, the backward shows 0.00875 + 0.0175 - 0.0035 - 0.02 = 0.00275."""
    args = dict(gather_bytes=2, reduce_bytes=4, dp=8, compute_s=0.03, bw_gb_per_s=100,
                latency_s=0.0, zero_stage=3, reshard_after_forward=True)
    moe = fsdp_exposed_s(2e8, 1e8, 1e9, experts=(1e8, 5e8, 1), **args)
    assert moe == pytest.approx(0.00175 + 0.0035 + 0.00275)
    # sharded over 8 they cost what the same parameters of a dense stage do
    assert fsdp_exposed_s(2e8, 1e8, 1e9, experts=(1e8, 5e8, 8), **args) == pytest.approx(
        fsdp_exposed_s(2e8, 1e8, 1e9, **args))


# ---- GEMM waves and clocks ---------------------------------------------------------------

def test_wave_overhead_from_the_published_k_sweep():
    """xwhzz/tilelang benchmark/matmul_fp8/README.md (H800, M = N = 8192, 16 waves): 0.204672 ms at
    K = 2048, 1.427264 ms at K = 16384; the line through them is 0.0300 ms at K = 0, 1.88 us a wave
    (the catalog's gemm_wave_overhead_us for Hopper)."""
    t0 = wave_overhead_s(2048, 0.204672e-3, 16384, 1.427264e-3, 16)
    assert t0 == pytest.approx(1.876e-6, rel=1e-3)
    assert gpu("h100-80gb").gemm_wave_overhead_us == round(t0 * 1e6, 2)


def test_compute_time_adds_each_waves_fixed_time():
    """8192 x 4096 x 4096 on an H100: 32 x 32 = 1024 tiles of 256 x 128 in 8 waves of 132; its
    compute time is the math at peak x 0.84 x q plus 8 x 1.88 us. A100 has no such term (its
    serial epilogue is priced instead)."""
    h100 = gpu("h100-80gb")
    g = Gemm("x", 8192, 4096, 4096)
    assert waves(g, h100) == 8
    q = 1024 / (8 * 132)
    assert compute_time_s(g, h100) == pytest.approx(g.flops / (989e12 * 0.84 * q) + 8 * 1.88e-6)
    assert gpu("a100-80gb").gemm_wave_overhead_us == 0


def test_sustained_clock_slows_the_tensor_cores_not_hbm():
    """The catalog's sustained clock (an H100 keeps 1575 of 1980 MHz under full load: 0.795) slows
    a compute-bound GEMM, its waves' fixed time included, by 1/0.795
    (gemm_pricing.priced_gemm_time_s, gemm_model.at_sustained_clock); an HBM-bound one keeps its
    time (the memory clock does not drop)."""
    import dataclasses

    from llmlaunch.topology.gemm_model import memory_time_s
    from llmlaunch.topology.gemm_pricing import priced_gemm_time_s

    h100 = gpu("h100-80gb")
    assert h100.sustained_clock_fraction == 0.795
    boost = dataclasses.replace(h100, sustained_clock_fraction=1.0)
    big = Gemm("mlp-up", 8192, 14336, 4096)
    assert priced_gemm_time_s(big, h100, 2) == pytest.approx(priced_gemm_time_s(big, boost, 2) / 0.795)
    thin = Gemm("x", 132 * 256, 128, 16)     # one wave, 16-deep: its 9.7 MB take longer than its math
    assert priced_gemm_time_s(thin, h100, 2) == pytest.approx(memory_time_s(thin, h100, 2))
    assert priced_gemm_time_s(thin, h100, 2) == priced_gemm_time_s(thin, boost, 2)
    with pytest.raises(ValueError, match="sustained_clock_fraction must be in"):
        dataclasses.replace(h100, sustained_clock_fraction=1.2)


# ---- issue 23 follow-up: fused attention's backward, torchtitan's per-op recompute, torch.compile

def test_fused_attention_backward_counts_the_kernels_score_recompute():
    """FlashAttention's backward recomputes S = QK^T: five GEMMs of the forward's size where gemms.py
    lists four, and its published rates count 2.5 forward passes of FLOPs. A causal 8k x 8k score
    GEMM of 32 heads of 128 on an H100 (FA2 backward 0.322 of 989 TFLOP/s at the 0.795 sustained
    clock): 2.749e11 executed FLOPs x 2.5/2 / (989e12 x 0.322 x 0.795) = 1.3572 ms; its forward
    (cuDNN 0.535 forward) is not scaled: 0.6535 ms."""
    from llmlaunch.topology.gemm_pricing import FUSED_ATTENTION_BACKWARD_FLOPS_FACTOR, priced_gemm_time_s

    h100 = gpu("h100-80gb")
    assert FUSED_ATTENTION_BACKWARD_FLOPS_FACTOR == 1.25
    scores = Gemm("attention-scores", 8192, 8192, 128, 32, executed=0.5, on_chip=8192 * 8192)
    assert scores.executed_flops == 274_877_906_944
    backward = Gemm("attention-scores", 8192, 128, 8192, 32, phase="backward-data", executed=0.5,
                    on_chip=8192 * 8192)
    assert priced_gemm_time_s(backward, h100, 2, attention_kernel="fa2") == pytest.approx(1.35716e-3, rel=1e-5)
    assert priced_gemm_time_s(scores, h100, 2, attention_kernel="cudnn") == pytest.approx(6.5347e-4, rel=1e-4)


def test_torchtitan_per_op_recompute_hand_values():
    """torchtitan's op policy saves every other matmul's output (wq, wv, w1, w2) and flash
    attention's: backward runs wk, wo and w3 again (Llama 3.1 8B, 2 x 8192 tokens, tp 1:
    2 x 16384 x 4096 x (1024 + 4096 + 14336) = 2.611e12 FLOPs), and every element-wise kernel
    (the same bytes as full recompute)."""
    from llmlaunch.topology.gemms import OP_SELECTIVE, op_recomputed_gemms
    from llmlaunch.topology.kernels import block_kernel_bytes, block_kernels

    again = op_recomputed_gemms(LLAMA3_8B, micro_batch=2, seq_len=8192, tp=1)
    assert [(g.name, g.m, g.n, g.k) for g in again] == [
        ("qkv", 16384, 1024, 4096), ("out-proj", 16384, 4096, 4096), ("mlp-up", 16384, 14336, 4096)]
    assert sum(g.flops for g in again) == 2_611_340_115_968
    kernels = block_kernels(LLAMA3_8B, kernels="eager", tp=1, seq_len=8192, act=2,
                            flash_attention=True, dropout=False)
    assert block_kernel_bytes(kernels, OP_SELECTIVE) == block_kernel_bytes(kernels, "full")
    assert block_kernel_bytes(kernels, OP_SELECTIVE) > block_kernel_bytes(kernels, "selective")


def test_inductor_kernels_and_copy_engine_overlap():
    """torch.compile's fused block moves what the fused set moves (Llama 3.1 8B per token at tp 1,
    bf16: norms 2 x (2 + 3) x 2 x 4096, residual adds 6 x 2 x 4096 and their gradient sums 6 x 2 x
    4096, SwiGLU (3 + 5) x 2 x 14336, RoPE 2 x 2 x 2 x (4096 + 1024), the context copy 2 x 2 x 4096:
    466,944 bytes, against eager's 1,753,088); async TP's copy-engine collectives take no SMs: a
    1 ms reduce-scatter beside a 3 ms GEMM adds nothing, beside a 0.4 ms one 0.6 ms."""
    from llmlaunch.topology.collectives import overlapped_exposed_s
    from llmlaunch.topology.engines import ENGINES
    from llmlaunch.topology.kernels import block_kernel_bytes, block_kernels

    def per_token(kernels):
        return block_kernel_bytes(block_kernels(LLAMA3_8B, kernels=kernels, tp=1, seq_len=8192,
                                                act=2, flash_attention=True, dropout=False), "none")

    assert per_token("inductor") == per_token("megatron") == 466_944
    assert per_token("eager") == 1_753_088
    assert ENGINES["fsdp-compile"].kernels == "inductor" and ENGINES["fsdp"].kernels == "eager"
    assert ENGINES["fsdp-compile-2025"].logits_bytes == 4.0 and ENGINES["fsdp-compile"].logits_bytes == 12.0
    assert ENGINES["fsdp-compile-async-tp"].tp_overlap_on_copy_engines
    assert overlapped_exposed_s(1e-3, 3e-3, 0.0) == 0.0
    assert overlapped_exposed_s(1e-3, 0.4e-3, 0.0) == pytest.approx(0.6e-3)
