"""`llmlaunch validate` without ranks: its argument checks and how rows pair measured with
predicted (launcher/validate.py)."""
import pytest

from llmlaunch.launcher.validate import build_rows
from paths import TINY_CONFIG as TINY


def test_steps_below_two_are_refused():
    import argparse

    from llmlaunch.cli.validate import add_validate_arguments, run_validate

    parser = argparse.ArgumentParser()
    add_validate_arguments(parser)
    with pytest.raises(ValueError, match="at least 2"):
        run_validate(parser.parse_args(["--config", str(TINY), "--steps", "1"]))


def test_build_rows_pairs_measured_with_predicted():
    records = [{"rank": 1, "stage": 0, "measured": {"weights": 110.0, "step_time_s": 2.0}},
               {"rank": 0, "stage": 0, "measured": {"weights": 100.0, "peak": 5.0}}]
    predicted = {0: {"weights": 100.0, "step_time_s": 1.0, "peak": 4.0, "optimizer": 1.0}}
    rows = build_rows(records, predicted)
    assert [(r["rank"], r["quantity"]) for r in rows] == [(0, "weights"), (0, "peak"),
                                                          (1, "weights"), (1, "step_time_s")]
    assert rows[2]["error_pct"] == pytest.approx(10.0)
    assert rows[3]["error_pct"] == pytest.approx(100.0)


def test_the_cpu_device_takes_every_ranks_gemm_rates_by_shape():
    """device_from_figures: scalar figures and each GEMM shape's rate as medians over the ranks;
    the tile model and the efficiencies off (the measurements are the device)."""
    from llmlaunch.launcher.device_probe import device_from_figures, median_gemm_tflops
    from llmlaunch.topology.gemm_model import gemm_time_s
    from llmlaunch.topology.gemms import Gemm
    from llmlaunch.topology.hardware import gpu

    figures = [{"peak_tflops": 0.1, "hbm_gb_per_s": 10.0, "gemm_tflops": {"128x256x64": 0.08}},
               {"peak_tflops": 0.3, "hbm_gb_per_s": 30.0,
                "gemm_tflops": {"128x256x64": 0.06, "64x64x16x8": 0.04}},
               {"peak_tflops": 0.2, "hbm_gb_per_s": 20.0, "gemm_tflops": {"128x256x64": 0.07}}]
    assert median_gemm_tflops(figures) == {"128x256x64": 0.07, "64x64x16x8": 0.04}
    device = device_from_figures(gpu("cpu"), figures)
    assert (device.peak_tflops, device.hbm_gb_per_s) == (0.2, 20.0)
    assert (device.matmul_efficiency, device.hbm_efficiency, device.sm_count) == (1.0, 1.0, 0)
    measured = Gemm("mlp-up", 128, 256, 64)
    assert gemm_time_s(measured, device, 4) == pytest.approx(measured.flops / 0.07e12)
    other = Gemm("x", 128, 128, 64)
    assert gemm_time_s(other, device, 4) == pytest.approx(max(other.flops / 0.2e12,
                                                              4 * other.operand_elements() / 20e9))


def test_gemm_rates_pair_each_gemm_with_the_model_and_fit_the_catalog():
    """validate.json's gemm_rates for tiny-cpu as a100-80gb: every GEMM of one block, forward and
    both backward phases, with its shape, the measured and the modelled rate; rates measured at
    0.5 x the model's fit, GEMM by GEMM, the efficiency whose main loop plus the C store (Ampere's
    serial epilogue) takes the measured time, 2 (main loop + store) - store; their median."""
    from llmlaunch.config import load_run_config
    from llmlaunch.launcher.validate import gemm_rates
    from llmlaunch.topology.gemm_model import gemm_time_s
    from llmlaunch.topology.gemms import block_gemms
    from llmlaunch.topology.hardware import gpu

    config = load_run_config(TINY, ["cluster.gpu=a100-80gb"])
    spec, lay = config.model_spec(), config.layout
    gemms = block_gemms(spec, micro_batch=lay.micro_batch, seq_len=spec.seq_len, tp=lay.tp,
                        recompute="none")
    a100 = gpu("a100-80gb")
    rates = {g.shape: 0.5 * g.flops / gemm_time_s(g, a100, 2) / 1e12 for g in gemms}
    out = gemm_rates(config, "bf16", [{"gemm_tflops": rates}])
    assert len(out["gemms"]) == 18 and out["catalog"] == "a100-80gb"
    assert out["gemms"]["mlp-up.backward-weight"]["shape"] == "64x256x128"
    assert all(row["measured_tflops"] == pytest.approx(0.5 * row["model_tflops"])
               for row in out["gemms"].values())
    fitted = out["fitted"]["matmul_efficiency"]
    # tiny tiles: every GEMM compute-bound (q small)
    from statistics import median

    from llmlaunch.topology.gemm_model import compute_time_s, quantisation, store_time_s
    hand = median(g.flops / (312e12 * quantisation(g, a100)
                             * (2 * (compute_time_s(g, a100) + store_time_s(g, a100, 2))
                                - store_time_s(g, a100, 2))) for g in gemms)
    assert fitted == pytest.approx(hand)
    assert 0.44 < fitted < 0.911 / 2 * 1.01
    assert gemm_rates(config, "bf16", [{}]) == {}
