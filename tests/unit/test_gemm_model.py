"""The GEMM shape model (topology/gemm_model.py): tile and wave quantisation, the HBM roofline,
and the catalog's sourced GEMM figures reproduced at their own shapes."""
import dataclasses

import pytest

from llmlaunch.topology.gemm_model import (fitted_matmul_efficiency, gemm_efficiency, gemm_time_s,
                                           quantisation, useful_fraction)
from llmlaunch.topology.gemms import Gemm
from llmlaunch.topology.hardware import gpu

A100 = gpu("a100-80gb")
H100 = gpu("h100-80gb")


def test_useful_fraction_hand_values():
    # 2048 x 2048 in 256 x 128 tiles: 8 x 16 = 128 tiles, 2 waves of 108 SMs:
    # 2048^2 / (2 x 108 x 32768) = 0.5926
    assert useful_fraction(2048, 2048, 1, 256, 128, 108) == pytest.approx(4194304 / 7077888)
    # one whole wave of whole tiles: 108 x 256 rows by 128 columns fills every slot
    assert useful_fraction(108 * 256, 128, 1, 256, 128, 108) == 1.0
    # tile quantisation alone: n = 96 in 128-wide tiles wastes a quarter (108 tiles, one wave)
    assert useful_fraction(108 * 256, 96, 1, 256, 128, 108) == pytest.approx(0.75)
    # the batch counts tiles: 4 x (256 x 128) = 4 tiles of 108 slots
    assert useful_fraction(256, 128, 4, 256, 128, 108) == pytest.approx(4 / 108)


def test_the_better_tile_orientation_is_taken():
    # m = 128, n = 256 x 108: 256 x 128 tiles waste half of each (m padded to 256); 128 x 256 fit
    g = Gemm("x", 128, 256 * 108, 4096)
    assert useful_fraction(128, 256 * 108, 1, 256, 128, 108) == pytest.approx(0.5)
    assert quantisation(g, A100) == 1.0


@pytest.mark.parametrize("device,shape,published", [
    # stas00/ml-engineering, compute/accelerator/README.md, MAMF BF16 v2 table
    (A100, (1024, 10240, 5120), 271.2),
    (H100, (2048, 2048, 13312), 794.5),
])
def test_the_catalog_reproduces_its_source_measurement_at_its_shape(device, shape, published):
    """matmul_efficiency is the MAMF over the useful fraction of its best shape, so the model
    gives that shape the measured TFLOP/s (A100: 320 tiles in 3 waves, 320/324; H100: 128 tiles in
    one wave of 132, 128/132)."""
    g = Gemm("mamf", *shape)
    assert gemm_efficiency(g, device, 2) * device.peak_tflops == pytest.approx(published, rel=2e-3)


def test_a_thin_gemm_is_bound_by_hbm():
    """[221184, 64] x [64, 64] on an A100 (m = 8 waves of 108 x 256 rows; n = 64 half-fills a
    128-wide tile, q = 0.5): 1.81 GFLOP at 0.911 x 312 TFLOP/s x 0.5 would take 12.7 us; reading
    its A and B, 2 (221184 x 64 + 64 x 64) bytes at 2039 x 0.775 GB/s (the 80 GB part's measured
    copy), takes 17.92 us, and the C store after the main loop 17.92 us more: 35.84 us, all its
    bytes at HBM speed."""
    g = Gemm("x", 221184, 64, 64)
    assert quantisation(g, A100) == pytest.approx(0.5)
    bw = 2039e9 * 0.775
    loads, store = 2 * (221184 * 64 + 64 * 64) / bw, 2 * 221184 * 64 / bw
    assert loads == pytest.approx(17.92e-6, rel=1e-3) and store == pytest.approx(17.92e-6, rel=1e-3)
    assert gemm_time_s(g, A100, 2) == pytest.approx(loads + store)
    assert g.flops / (A100.achievable_flops_per_s * 0.5) == pytest.approx(12.7e-6, rel=1e-2)


def test_an_ampere_gemm_adds_its_c_store_to_the_main_loop():
    """8192 x 3072 x 6144 (Korthikanti's 22B MLP-in at t = 8, micro-batch 4): 768 tiles in 8 waves,
    q = 0.889; 309.2 GFLOP at 0.911 x 312 x 0.889 TFLOP/s = 1.224 ms of math under its 0.040 ms
    of A and B loads, then 50.3 MB of C at 1580 GB/s = 0.032 ms. Hopper overlaps the store: the
    H100 takes the roofline's max."""
    from llmlaunch.topology.gemm_model import compute_time_s, memory_time_s, store_time_s

    g = Gemm("mlp-up", 8192, 3072, 6144)
    assert quantisation(g, A100) == pytest.approx(768 / 864)
    store = 2 * 8192 * 3072 / (2039e9 * 0.775)
    assert store_time_s(g, A100, 2) == pytest.approx(store)
    assert gemm_time_s(g, A100, 2) == pytest.approx(compute_time_s(g, A100) + store)
    assert compute_time_s(g, A100) == pytest.approx(2 * 8192 * 3072 * 6144 / (312e12 * 0.911 * 768 / 864))
    assert gemm_time_s(g, H100, 2) == pytest.approx(max(compute_time_s(g, H100),
                                                        memory_time_s(g, H100, 2)))
    # a fused kernel keeping the score matrix on chip is no library GEMM: the roofline's max
    fused = dataclasses.replace(g, on_chip=1.0)
    assert gemm_time_s(fused, A100, 2) == pytest.approx(max(compute_time_s(fused, A100),
                                                            memory_time_s(fused, A100, 2)))


def test_a_measured_rate_replaces_the_model_at_its_shape():
    g = Gemm("x", 128, 256, 64)
    measured = dataclasses.replace(A100, measured_gemm_tflops=(("128x256x64", 2.0),))
    assert gemm_time_s(g, measured, 2) == pytest.approx(g.flops / 2e12)
    assert gemm_time_s(Gemm("y", 128, 256, 65), measured, 2) == gemm_time_s(Gemm("y", 128, 256, 65),
                                                                            A100, 2)


def test_fitting_matmul_efficiency_from_measured_rates():
    """Two compute-bound GEMMs measured at 0.8 and 0.9 of peak x q in their main loops (plus, on
    Ampere, their C store) fit 0.85 (the median); a memory-bound one does not vote."""
    from llmlaunch.topology.gemm_model import store_time_s

    big = Gemm("a", 108 * 256, 128 * 4, 8192)          # q = 1
    half = Gemm("b", 2048, 2048, 8192)                  # q = 0.5926
    thin = Gemm("c", 221184, 64, 64)                    # HBM-bound
    rates = {}
    for g, eff in ((big, 0.8), (half, 0.9)):
        seconds = g.flops / (312e12 * eff * quantisation(g, A100)) + store_time_s(g, A100, 2)
        rates[g.shape] = g.flops / seconds / 1e12
    rates[thin.shape] = 1.0
    assert fitted_matmul_efficiency(rates, [big, half, thin], A100, 2) == pytest.approx(0.85)
    assert fitted_matmul_efficiency({thin.shape: 1.0}, [thin], A100, 2) is None


def test_cpu_has_no_tile_model():
    assert quantisation(Gemm("x", 3, 5, 7), gpu("cpu")) == 1.0
