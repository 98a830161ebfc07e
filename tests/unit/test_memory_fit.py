"""A model too large for a rank is refused before any rank starts (launcher/memory_fit.py)."""
import time

import pytest

from llmlaunch.config import load_run_config
from llmlaunch.launcher.memory_fit import least_model_state_bytes, memory_refusal

pytestmark = pytest.mark.unit


def test_the_lower_bound_by_hand():
    config = load_run_config("tiny-cpu", ["model.layers=1000000000"])
    # a gpt2 block of width 64: 12 h^2 + 13 h = 49,984 parameters; pp 2 -> 5e8 blocks a stage;
    # fp32 ZeRO-1 dp 2: weights 4 + gradients 4 + (Adam 8 + fp32 master 4) / 2 = 14 bytes each
    want = 5e8 * 49_984 * 14
    assert least_model_state_bytes(config.model_spec(), config.layout_obj(), "fp32") == \
        pytest.approx(want)


def test_a_billion_layers_is_refused_at_once_naming_the_model():
    config = load_run_config("tiny-cpu", ["model.layers=1000000000"])
    started = time.perf_counter()
    line = memory_refusal(config, 4, 64 * 2**30)
    assert time.perf_counter() - started < 1
    assert line.startswith("model (layers 1000000000, hidden 64, vocab 1024) needs at least "
                           "325,858.6 GiB per rank")
    assert "this host's 64.0 GiB shared by 4 ranks" in line and "layout.pp" in line


def test_the_shipped_tiny_model_fits_and_a_gpu_run_is_checked_against_its_card():
    assert memory_refusal(load_run_config("tiny-cpu"), 4, 8 * 2**30) is None
    big = load_run_config("tiny-cpu", ["model.layers=64", "model.hidden=8192", "model.heads=64",
                                       "cluster.gpu=a100-80gb", "layout.pp=2", "layout.dp=2"])
    line = memory_refusal(big, 8, 1e15)
    # 32 blocks of 12 h^2 + 13 h = 805,519,360 parameters, 14 bytes each: 336.0 GiB
    assert "needs at least 336.0 GiB per rank" in line
    assert "more than the 80 GiB of one a100-80gb" in line
