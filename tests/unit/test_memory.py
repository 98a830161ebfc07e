"""Memory estimators pinned to the ZeRO and activation-recomputation papers."""
import pytest

from llmlaunch.topology.memory import (PRECISIONS, Precision, activation_bytes_per_layer,
                                       buffer_bytes, fsdp_unsharded_bytes,
                                       micro_batches_in_flight, model_state_bytes, pipeline_memory)
from llmlaunch.topology.memory_legend import buffers_legend
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


def test_the_memory_legend_names_the_engines_buffers():
    """The memory table's 'buffers =' says what the engine's buffers hold (buffers_held): DeepSpeed's
    ZeRO buckets or gathered parameters, none on BF16_Optimizer's path, FSDP's gathered weights;
    each case holds a nonzero buffer_bytes / fsdp_unsharded_bytes exactly when it names one."""
    def legend(engine, precision, zero, dp=8, pp=1):
        return buffers_legend(engine, precision, zero, dp, pp)

    tail = "framework + 5% allocator fragmentation"
    assert legend("deepspeed", "bf16", 1) == f"buffers = {tail}"
    assert legend("deepspeed", "fp32", 1) == f"buffers = DeepSpeed's ZeRO-1 reduce and all-gather buckets + {tail}"
    assert legend("deepspeed", "bf16", 2) == f"buffers = DeepSpeed's ZeRO-2 all-gather bucket + {tail}"
    assert legend("deepspeed", "bf16", 3) == f"buffers = ZeRO-3's gathered parameters + {tail}"
    assert legend("megatron-core", "fp8", 1, pp=4) == f"buffers = {tail}"
    assert legend("fsdp", "bf16", 3) == ("buffers = fsdp's gathered bf16 weights (2 blocks and the "
                                         f"root unit) and the head's gradient + {tail}")
    assert legend("llm-foundry", "bf16", 2).startswith("buffers = llm-foundry's gathered bf16 "
                                                       "weights of the stage and one block's gradient")
    assert buffer_bytes(1e9, 1, PRECISIONS["bf16"], 8) == 0 < buffer_bytes(1e9, 1, PRECISIONS["fp32"], 8)
    assert fsdp_unsharded_bytes(1e9, 1e8, 1e8, 1e8, 1, 1, PRECISIONS["bf16-fsdp"]) == 0
    assert fsdp_unsharded_bytes(1e9, 1e8, 1e8, 1e8, 2, 1, PRECISIONS["bf16-fsdp"]) > 0
    assert legend("fsdp", "bf16", 3, pp=8) == (
        "buffers = fsdp's gathered bf16 weights of the stage, one block's gradient and the stage's "
        f"unsharded fp32 gradient kept across the micro-batches + {tail}")


def test_fsdp_under_a_pipeline_keeps_the_stages_gradient_unsharded_in_fp32():
    """torch.distributed.pipelining over FSDP2 (torchtitan's 3D): no gradient sync and no reshard
    after backward until the last micro-batch, FSDP2 accumulating each unsharded gradient in the
    reduce dtype. A stage of 1e9 parameters, blocks of 1e8, bf16 compute and fp32 reduce:
    2 (1e9 + 1e8) gathered weights and one block's gradient = 2.2e9, plus 4 x 1e9 = 6.2e9 bytes;
    without a pipeline FULL_SHARD holds 2 (2 x 1e8 + 1e8 + 1e8) = 0.8e9, unchanged."""
    fsdp = PRECISIONS["bf16-fsdp"]
    assert fsdp_unsharded_bytes(1e9, 1e8, 1e8, 1e8, 3, 4, fsdp, pipeline_no_sync=True) == 6.2e9
    assert fsdp_unsharded_bytes(1e9, 1e8, 1e8, 1e8, 3, 4, fsdp) == 2.2e9
    assert fsdp_unsharded_bytes(1e9, 1e8, 1e8, 1e8, 3, 1, fsdp, pipeline_no_sync=True) == 0.8e9
    # the sharded gradients (here 0.5e9 bytes, counted with the model states) exist only after the
    # last micro-batch's reduce-scatter: the accumulated gradient takes their place, 4e9 - 0.5e9
    assert fsdp_unsharded_bytes(1e9, 1e8, 1e8, 1e8, 3, 4, fsdp, pipeline_no_sync=True,
                                sharded_gradients=0.5e9) == 5.7e9


def test_fsdp_float8_all_gather_holds_the_gathered_linear_weights_in_one_byte():
    """torchao's Float8 all-gather: the gathered copies of the linear layers are FP8. FULL_SHARD
    without a pipeline, blocks of 1e8 with 0.75e8 linear: 2 (2e8 + 1e8 + 1e8) - 2 x 0.75e8 x (2 - 1)
    = 6.5e8; under a pipeline, a stage of 1e9 with 8e8 linear: 2 (1e9 + 1e8) - 8e8 + 4 x 1e9 = 5.4e9."""
    fsdp = PRECISIONS["bf16-fsdp"]
    assert fsdp_unsharded_bytes(1e9, 1e8, 1e8, 1e8, 3, 1, fsdp, fp8_linear=(0.75e8, 8e8)) == 6.5e8
    assert fsdp_unsharded_bytes(1e9, 1e8, 1e8, 1e8, 3, 4, fsdp, pipeline_no_sync=True,
                                fp8_linear=(0.75e8, 8e8)) == 5.4e9


def test_zero2_bf16_matches_deepspeeds_2_psi_plus_18_psi_over_n():
    from llmlaunch.topology.memory import deepspeed_model_state_bytes

    # Psi = 8e9 on dp 8: bf16 weights 16e9; gradient partition 2e9 + fp32 copy in the step 4e9
    # (more than the 2e8 x 2 = 4e8 reduce bucket); fp32 master + m + v 12e9. Sum 34e9 =
    # estimate_zero2_model_states_mem_needs' 2 Psi + 18 Psi/N = 16e9 + 18e9
    states = deepspeed_model_state_bytes(8e9, 8, 2, PRECISIONS["bf16"])
    assert states == {"weights": 16e9, "gradients": 6e9, "optimizer": 12e9}
    assert sum(states.values()) == 2 * 8e9 + 18 * 8e9 / 8
    # ZeRO-3: weights partitioned too, 2e9; the fp32 copy is one sub-group of 1e9 x 4
    assert deepspeed_model_state_bytes(8e9, 8, 3, PRECISIONS["bf16"]) == {
        "weights": 2e9, "gradients": 6e9, "optimizer": 12e9}


def test_zero2_and_3_fp32_as_validate_measures_them():
    from llmlaunch.topology.memory import deepspeed_model_state_bytes

    # fp32, Psi = 1e6 (under one reduce bucket), dp 2: partition 4 x 5e5 plus the whole micro-batch
    # of unreduced gradients 4e6 (no separate fp32 copy); ZeRO-2 and ZeRO-3 clone an fp32 master
    # (4 + 8 per parameter / 2)
    assert deepspeed_model_state_bytes(1e6, 2, 2, PRECISIONS["fp32"]) == {
        "weights": 4e6, "gradients": 6e6, "optimizer": 6e6}
    assert deepspeed_model_state_bytes(1e6, 2, 3, PRECISIONS["fp32"]) == {
        "weights": 2e6, "gradients": 6e6, "optimizer": 6e6}
    # ZeRO 0/1 stay the paper's accounting
    assert deepspeed_model_state_bytes(1e6, 2, 1, PRECISIONS["fp32"]) == \
        model_state_bytes(1e6, 2, 1, PRECISIONS["fp32"])


def test_offload_leaves_what_deepspeeds_estimators_leave_on_the_gpu():
    from llmlaunch.topology.memory import deepspeed_model_state_bytes, offloaded_bytes

    bf16 = PRECISIONS["bf16"]
    # ZeRO-2 + optimizer offload: the bf16 weights 2 Psi stay (DeepSpeed's cpu_offload estimate),
    # plus the 2e8-element bf16 reduce bucket
    assert deepspeed_model_state_bytes(8e9, 8, 2, bf16, "optimizer") == {
        "weights": 16e9, "gradients": 4e8, "optimizer": 0.0}
    # ZeRO-3 with parameters offloaded: only the bucket; CPU memory 16 Psi/N + 2 Psi/N = 18e9
    # (estimate_zero3_model_states_mem_needs with zero_init: 18 Psi / nodes, one GPU here per N)
    assert deepspeed_model_state_bytes(8e9, 8, 3, bf16, "optimizer+params") == {
        "weights": 0.0, "gradients": 4e8, "optimizer": 0.0}
    assert offloaded_bytes(8e9, 8, bf16, "optimizer+params") == 18e9
    assert offloaded_bytes(8e9, 8, bf16, "optimizer") == 16e9


def test_zero3_gathered_parameters_and_buckets():
    from llmlaunch.topology.memory import zero3_live_parameter_bytes

    bf16 = PRECISIONS["bf16"]
    # stage3_max_live_parameters 1e9 beats a 1e8-element layer + the 5e7 prefetch: 1e9 x 2 bytes
    assert zero3_live_parameter_bytes(8.6e9, 1e8, bf16) == 2e9
    # a layer larger than the limit is gathered whole, with the prefetch behind it
    assert zero3_live_parameter_bytes(8.6e9, 2e9, bf16) == (2e9 + 5e7) * 2
    # never more than the rank's whole model
    assert zero3_live_parameter_bytes(1e5, 1e4, bf16) == 2e5
    assert buffer_bytes(8.6e9, 3, bf16, 8, 1e8) == 2e9
    # ZeRO-2 keeps the all-gather bucket (the reduce bucket is counted with the gradients)
    assert buffer_bytes(8.6e9, 2, bf16, 8) == 2e8 * 2


def test_fsdp_gathers_an_moe_block_as_this_gpu_holds_it():
    """FSDP (and ZeRO-3) gather one block at a time; an MoE block's routed experts are split over
    ep, so the gathered block holds E/ep of them. Mixtral's FULL_SHARD buffers (2 blocks in bf16)
    at ep 8 are smaller than at ep 1 by 2 blocks x 2 bytes x 7/8 of the routed experts."""
    from llmlaunch.topology.engines import ENGINES
    from llmlaunch.topology.experts import routed_expert_params

    mixtral = preset("mixtral-8x7b")

    def gathered(ep):
        stage, = pipeline_memory(mixtral, dp=8, pp=1, tp=1, micro_batch=1, micro_batches=1,
                                 zero_stage=3, recompute="full", precision=PRECISIONS["bf16-fsdp"],
                                 framework_bytes=0, seq_len=4096, ep=ep, engine=ENGINES["fsdp"])
        return stage.buffers - stage.overhead

    expected = 2 * 2 * routed_expert_params(mixtral) * (1 - 1 / 8)
    assert gathered(1) - gathered(8) == pytest.approx(expected)
