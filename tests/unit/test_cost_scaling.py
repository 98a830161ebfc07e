"""Cost and scaling-law formulas pinned to the lecture's tables and the papers."""
import pytest

from llmlaunch.topology.cost import cost_from_params, energy_mwh
from llmlaunch.topology.scaling import FITS, inference_optimal, optimal_point


def test_gpt3_gpu_days_reproduce_the_lecture_at_full_utilisation():
    # lecture table: GPT-3 175B, 300B tokens, ~3.1e23 FLOPs, ~11,500 A100 GPU-days. 6ND at the
    # A100's 312 TFLOP/s gives 11,685 GPU-days: the table assumes peak throughput (MFU 1).
    result = cost_from_params(params=175e9, tokens=300e9, peak_tflops=312, mfu=1.0, gpus=1024,
                              usd_per_gpu_hour=2.0, watts_per_gpu=400)
    assert result.flops == pytest.approx(3.15e23)
    assert result.gpu_days == pytest.approx(11_685, rel=1e-3)
    assert result.gpu_days == pytest.approx(11_500, rel=0.02)
    assert result.wall_days == pytest.approx(11_685 / 1024, rel=1e-3)
    assert result.cost_usd == pytest.approx(11_685 * 24 * 2.0, rel=1e-3)


def test_llama2_70b_gpu_days():
    # lecture table: 70B on 2T tokens ~8.4e23 FLOPs, ~31,000 A100 GPU-days
    result = cost_from_params(params=70e9, tokens=2e12, peak_tflops=312, mfu=1.0, gpus=2048,
                              usd_per_gpu_hour=2.0, watts_per_gpu=400)
    assert result.gpu_days == pytest.approx(31_000, rel=0.02)


def test_energy_hand_value():
    # 1000 GPU-hours at 400 W and PUE 1.1 = 0.44 MWh
    assert energy_mwh(1000, 400, 1.1) == pytest.approx(0.44)


def test_mfu_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="--mfu"):
        cost_from_params(params=1e9, tokens=1e9, peak_tflops=312, mfu=1.5, gpus=1,
                         usd_per_gpu_hour=1, watts_per_gpu=1)


def test_chinchilla_budget_gives_chinchilla():
    # Hoffmann et al. 2022: the Gopher budget 5.76e23 FLOPs -> Chinchilla, 70B on 1.4T tokens
    # (Table 3, Approach 1: 67B, 1.5T). The replication fit's optimum (Besiroglu et al. 2024) lands there.
    p = optimal_point(FITS["besiroglu"], 5.76e23)
    assert p.params == pytest.approx(70e9, rel=0.05)
    assert p.tokens == pytest.approx(1.4e12, rel=0.07)
    assert p.compute_flops == pytest.approx(5.76e23)
    assert 15 < p.tokens_per_param < 25  # the lecture's ~20 tokens per parameter


def test_hoffmann_loss_hand_value():
    # L = 1.69 + 406.4 / N^0.34 + 410.7 / D^0.28 at N = 70e9, D = 1.4e12
    fit = FITS["hoffmann"]
    expected = 1.69 + 406.4 / 70e9 ** 0.34 + 410.7 / 1.4e12 ** 0.28
    assert fit.loss(70e9, 1.4e12) == pytest.approx(expected)
    assert fit.loss(70e9, 1.4e12) == pytest.approx(1.937, abs=1e-3)


def test_optimum_is_a_minimum_of_the_fit():
    fit = FITS["besiroglu"]
    c = 1e22
    n, d = fit.compute_optimal(c)
    for scale in (0.7, 1.4):
        assert fit.loss(n * scale, c / 6 / (n * scale)) > fit.loss(n, d)


def test_tokens_for_loss_inverts_the_fit():
    fit = FITS["besiroglu"]
    assert fit.tokens_for_loss(7e9, fit.loss(7e9, 2e12)) == pytest.approx(2e12, rel=1e-9)
    assert fit.tokens_for_loss(7e9, 1.0) is None


def test_inference_targeted_model_is_smaller_and_trained_longer():
    fit = FITS["besiroglu"]
    base = optimal_point(fit, 1e24)
    served = inference_optimal(fit, base.loss, inference_tokens=1e14)
    assert served.params < base.params / 2
    assert served.tokens_per_param > 2 * base.tokens_per_param
    assert served.loss == pytest.approx(base.loss, abs=1e-6)
