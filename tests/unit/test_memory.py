"""Memory estimators pinned to the ZeRO and activation-recomputation papers."""
import pytest

from llmlaunch.topology.memory import (PRECISIONS, Precision, activation_bytes_per_layer,
                                       buffer_bytes, micro_batches_in_flight, model_state_bytes,
                                       pipeline_memory)
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.shapes import preset

GB = 1e9


@pytest.mark.parametrize("stage, expected_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_figure1(stage, expected_gb):
    # Rajbhandari et al. 2020, Figure 1: Psi = 7.5B, N_d = 64, K = 12, fp16 weights and gradients
    fp16 = Precision(weight_bytes=2, grad_bytes=2, optimizer_bytes=12, activation_bytes=2)
    total = sum(model_state_bytes(7.5e9, 64, stage, fp16).values())
    assert total / GB == pytest.approx(expected_gb, abs=0.05)


def test_bf16_and_fp32_bytes_per_parameter():
    # DeepSpeed's BF16_Optimizer: 2 (bf16 weights) + 4 (fp32 accumulation) + 2 (bf16 .grad) + 12
    assert sum(model_state_bytes(1, 1, 0, PRECISIONS["bf16"]).values()) == 20
    # ZeRO-1 over 4 ranks shards only the 12: both gradient buffers stay whole (validate measures it)
    assert model_state_bytes(1, 4, 1, PRECISIONS["bf16"]) == {"weights": 2, "gradients": 6,
                                                             "optimizer": 3}
    # Megatron-LM's accounting (the published runs): fp32 main gradients only
    assert sum(model_state_bytes(1, 1, 0, PRECISIONS["bf16-megatron"]).values()) == 18
    assert sum(model_state_bytes(1, 1, 0, PRECISIONS["fp32"]).values()) == 16  # 4 + 4 + 8


def test_llama_rmsnorm_saves_fp32_inputs_in_a_bf16_run():
    # model/layers.py's RMSNorm (HF's) upcasts: each of a block's two norm inputs is saved at 4
    # bytes, not 2 (4 sbh more); gpt2's LayerNorm saves its bf16 input, the paper's term
    s, b, h = 2048, 1, 8192
    llama = preset("llama2-70b")
    ours = activation_bytes_per_layer(llama, b, 1, "none", 2, norm_bytes=4, seq_len=s)
    fused = activation_bytes_per_layer(llama, b, 1, "none", 2, seq_len=s)
    assert ours - fused == 4 * s * b * h
    assert activation_bytes_per_layer(GPT, b, 1, "none", 2, norm_bytes=4) == \
        activation_bytes_per_layer(GPT, b, 1, "none", 2)
    assert PRECISIONS["bf16"].norm_bytes == 4 and PRECISIONS["fp32"].norm_bytes == 4
    assert PRECISIONS["bf16-megatron"].norm_bytes == 2


GPT = ModelSpec(arch="gpt2", layers=96, hidden=12288, heads=96, vocab=51200, seq_len=2048)


@pytest.mark.parametrize("t", [1, 2, 8])
def test_korthikanti_eq2_no_recompute(t):
    # Korthikanti et al. 2022, Table 2, "tensor parallel (baseline)": sbh (10 + 24/t + 5as/(ht))
    s, b, h, a = 2048, 1, 12288, 96
    expected = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))
    got = activation_bytes_per_layer(GPT, b, t, "none", 2, flash_attention=False, dropout=True)
    assert got == pytest.approx(expected, rel=1e-12)


def test_korthikanti_selective_and_full():
    # Table 2: selective recompute sbh (10 + 24/t); full recompute 2 sbh
    s, b, h, t = 2048, 2, 12288, 8
    assert activation_bytes_per_layer(GPT, b, t, "selective", 2, False, True) == pytest.approx(
        s * b * h * (10 + 24 / t))
    assert activation_bytes_per_layer(GPT, b, t, "full", 2) == 2 * s * b * h


def test_korthikanti_eq1_34sbh_plus_5as2b():
    # eq. (1): one layer without parallelism stores sbh (34 + 5as/h) bytes
    s, b, h, a = 2048, 1, 12288, 96
    got = activation_bytes_per_layer(GPT, b, 1, "none", 2, flash_attention=False, dropout=True)
    assert got == pytest.approx(s * b * h * 34 + 5 * a * s * s * b)


def test_flash_attention_drops_the_s_squared_term():
    eager = activation_bytes_per_layer(GPT, 1, 8, "none", 2, flash_attention=False)
    flash = activation_bytes_per_layer(GPT, 1, 8, "none", 2, flash_attention=True)
    assert eager - flash == pytest.approx(2 * 96 * 2048 ** 2 / 8 - 4 * 96 * 2048 / 8)


def test_1f1b_in_flight_micro_batches():
    # Narayanan et al. 2021, Section 2.2.1: stage i of p holds p - i micro-batches (at most m)
    assert [micro_batches_in_flight(i, 4, 8) for i in range(4)] == [4, 3, 2, 1]
    assert [micro_batches_in_flight(i, 4, 2) for i in range(4)] == [2, 2, 2, 1]


def test_first_stage_holds_the_most_activations_and_last_the_logits():
    spec = preset("gpt3-175b")
    stages = pipeline_memory(spec, dp=16, pp=8, tp=8, micro_batch=1, micro_batches=96, zero_stage=1,
                             recompute="none", precision=PRECISIONS["bf16"], framework_bytes=0)
    acts = [st.activations for st in stages]
    assert acts[0] == max(acts[:-1])
    assert acts[:-1] == sorted(acts[:-1], reverse=True)
    per_layer = activation_bytes_per_layer(spec, 1, 8, "none", 2)
    assert acts[0] == pytest.approx(12 * per_layer * 8)
    assert acts[-1] > 12 * per_layer  # logits and their fp32 buffers on top of one micro-batch


def test_zero1_shards_optimizer_over_dp_in_stage_memory():
    spec = preset("llama2-7b")
    kwargs = dict(dp=8, pp=1, tp=1, micro_batch=1, micro_batches=4, recompute="full",
                  precision=PRECISIONS["bf16"], framework_bytes=0)
    z0 = pipeline_memory(spec, zero_stage=0, **kwargs)[0]
    z1 = pipeline_memory(spec, zero_stage=1, **kwargs)[0]
    assert z1.optimizer == pytest.approx(z0.optimizer / 8)
    assert z1.weights == z0.weights and z1.gradients == z0.gradients


@pytest.mark.parametrize("t", [2, 8])
def test_korthikanti_sequence_parallel(t):
    # Korthikanti et al. 2022, Table 2, "tensor + sequence parallel": sbh (34/t + 5as/(ht)); with
    # selective recompute sbh 34/t; the block input under full recompute is sharded too: 2sbh/t
    s, b, h, a = 2048, 1, 12288, 96
    got = activation_bytes_per_layer(GPT, b, t, "none", 2, False, True, sequence_parallel=True)
    assert got == pytest.approx(s * b * h * (34 / t + 5 * a * s / (h * t)))
    got = activation_bytes_per_layer(GPT, b, t, "selective", 2, False, True, sequence_parallel=True)
    assert got == pytest.approx(s * b * h * 34 / t)
    assert activation_bytes_per_layer(GPT, b, t, "full", 2, sequence_parallel=True) == \
        pytest.approx(2 * s * b * h / t)


def test_interleaved_first_stage_holds_korthikantis_factor():
    # interleaved 1F1B: the first stage holds p (1 + (p - 1)/(p v)) = p + (p - 1)/v micro-batches of
    # its layers (Korthikanti et al. 2022, Section 4.2.3; Megatron-LM's warm-up count)
    for p, v in [(4, 2), (8, 4), (16, 3)]:
        assert micro_batches_in_flight(0, p, 1000, v) == pytest.approx(p + (p - 1) / v)
    assert micro_batches_in_flight(0, 4, 1000, 1) == 4
    # last stage, m = 2: (v - 1)p + 1 = 5 chunks, capped at m v = 4 chunks = 2 micro-batches of layers
    assert micro_batches_in_flight(3, 4, 2, 2) == pytest.approx(2.0)


def test_buffers_follow_the_deepspeed_optimizer_that_runs():
    # fp32 ZeRO-1 runs DeepSpeedZeroOptimizer: a 2e8-element reduce bucket (fp32 gradients) and a
    # 2e8-element all-gather bucket (weights); Megatron's accounting keeps the same buckets
    params = 1.3e9
    assert buffer_bytes(params, 1, PRECISIONS["fp32"], 8) == 2e8 * 4 + 2e8 * 4
    assert buffer_bytes(params, 1, PRECISIONS["bf16-megatron"], 8) == 2e8 * 4 + 2e8 * 2
    # bf16 ZeRO 0/1 runs BF16_Optimizer: no buckets, the flat fp32 gradients reduced in place
    assert buffer_bytes(params, 1, PRECISIONS["bf16"], 8) == 0
    assert buffer_bytes(params, 0, PRECISIONS["bf16"], 8) == 0
    assert buffer_bytes(1e5, 1, PRECISIONS["fp32"], 2) == 1e5 * 4 + 1e5 * 4
