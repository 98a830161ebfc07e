"""Lion and Adafactor (train.optimizer) on real ranks: a tiny llama under dp 2 x pp 2 x tp 2 trains
as one process does (fp32, relative 1e-5), its checkpoint carries the optimizer's state onto one
process (the losses after the resume equal the uninterrupted run's: a state dropped or cut wrongly
would change them), and `llmlaunch validate` finds Adafactor's factored state on pp 2 x tp 2 within
1% of the planner.

Lion runs under ZeRO-1 (its moment read and set through DeepSpeed's partition accessors),
Adafactor at ZeRO-0 (ZeRO would flatten what it factors: topology/optimizer_states.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from rank_harness import kill_session  # noqa: E402
from train_job import Job, losses  # noqa: E402

pytestmark = pytest.mark.ranks

STEPS, K = 6, 3
RTOL = 1e-5
GLOBAL_BATCH, MICRO_BATCH = 16, 2
LLAMA = ["model.arch=llama", "model.layers=4", "model.hidden=64", "model.heads=8",
         "model.kv_heads=4", "model.vocab=1024", "model.seq_len=64"]
ZERO = {"lion": 1, "adafactor": 0}
OPTIMIZERS = tuple(ZERO)
TAG = f"step{K:08d}"
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "llmlaunch" / "configs" / "tiny-cpu.yaml"


def sets(optimizer, dp, pp, tp, steps=STEPS):
    return [*LLAMA, f"train.optimizer={optimizer}", f"train.steps={steps}", "train.log_every=1",
            f"layout.micro_batch={MICRO_BATCH}", f"layout.dp={dp}", f"layout.pp={pp}",
            f"layout.tp={tp}", f"layout.zero_stage={ZERO[optimizer]}",
            f"layout.grad_accum={GLOBAL_BATCH // (MICRO_BATCH * dp)}"]


def run(run_dir: Path, items: list[str]) -> Path:
    job = Job(run_dir, *items)
    assert job.wait(timeout=600) == 0, job.output()[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """optimizer -> {parallel, single, resumed}: run directories of dp2 pp2 tp2 (a checkpoint at
    K), one process from scratch, and one process resumed from the parallel run's step-K tag."""
    cache = {}

    def get(optimizer):
        if optimizer not in cache:
            base = tmp_path_factory.mktemp(optimizer)
            parallel = run(base / "parallel", [*sets(optimizer, 2, 2, 2), f"checkpoint.every={K}",
                                               "checkpoint.keep=5"])
            single = run(base / "single", sets(optimizer, 1, 1, 1))
            resumed = base / "resumed"
            (resumed / "checkpoints").mkdir(parents=True)
            shutil.copytree(parallel / "checkpoints" / TAG, resumed / "checkpoints" / TAG)
            (resumed / "checkpoints" / "latest").write_text(TAG)
            shutil.copytree(parallel / "data", resumed / "data")
            run(resumed, sets(optimizer, 1, 1, 1))
            cache[optimizer] = {"parallel": parallel, "single": single, "resumed": resumed}
        return cache[optimizer]
    return get


def assert_losses_close(got, want):
    assert [s for s, _ in got] == [s for s, _ in want]
    for (step, a), (_, b) in zip(got, want):
        assert abs(a - b) <= RTOL * abs(b), (step, a, b)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_dp2_pp2_tp2_trains_as_one_process(runs, optimizer):
    got = runs(optimizer)
    assert [s for s, _ in losses(got["single"])] == list(range(1, STEPS + 1))
    assert_losses_close(losses(got["parallel"]), losses(got["single"]))
    first, last = losses(got["single"])[0][1], losses(got["single"])[-1][1]
    assert last < first         # it learns, so the optimizer really stepped


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_checkpoint_moves_the_optimizer_state_to_one_process(runs, optimizer):
    got = runs(optimizer)
    resumed = losses(got["resumed"])
    assert [s for s, _ in resumed] == list(range(K + 1, STEPS + 1))
    assert_losses_close(resumed, losses(got["single"])[K:])


def test_checkpoint_holds_each_optimizers_own_state(runs):
    """Lion: one moment per tensor. Adafactor: a matrix's row and column factors; the factor
    along an unsplit axis is the full matrix's, equal on both TP ranks."""
    canonical = runs("lion")["parallel"] / "checkpoints" / TAG / "canonical"
    state = torch.load(canonical / "blocks.0.attn.qkv.weight" / "tp0.pt", weights_only=True)
    assert sorted(state) == ["exp_avg", "param"]
    canonical = runs("adafactor")["parallel"] / "checkpoints" / TAG / "canonical"
    qkv = [torch.load(canonical / "blocks.0.attn.qkv.weight" / f"tp{r}.pt", weights_only=True)
           for r in range(2)]
    assert sorted(qkv[0]) == ["exp_avg_sq_col", "exp_avg_sq_row", "param"]
    assert qkv[0]["exp_avg_sq_row"].shape == (qkv[0]["param"].shape[0],)   # this slice's rows
    assert torch.equal(qkv[0]["exp_avg_sq_col"], qkv[1]["exp_avg_sq_col"])  # every column
    down = [torch.load(canonical / "blocks.0.mlp.down.weight" / f"tp{r}.pt", weights_only=True)
            for r in range(2)]                                               # row-parallel
    assert torch.equal(down[0]["exp_avg_sq_row"], down[1]["exp_avg_sq_row"])
    norm = torch.load(canonical / "blocks.0.ln1.weight" / "tp0.pt", weights_only=True)
    assert sorted(norm) == ["exp_avg_sq", "param"]


RUNNER = ("import argparse, sys\n"
          "from llmlaunch.cli.validate import add_validate_arguments, run_validate\n"
          "p = argparse.ArgumentParser(prog='llmlaunch validate')\n"
          "add_validate_arguments(p)\n"
          "sys.exit(run_validate(p.parse_args(sys.argv[1:])))\n")


def test_validate_finds_adafactors_state_within_one_percent(tmp_path):
    """pp 2 x tp 2: each stage's factors of its own slices (the elementwise optimizers' counts,
    Lion's at ZeRO 0 and 1, are checked against the planner in one process:
    tests/torch/test_optimizer_engine.py)."""
    optimizer, layout = "adafactor", (1, 2, 2)
    cmd = [sys.executable, "-c", RUNNER, "--config", str(TINY), "--run-dir",
           str(tmp_path / "run"), "--steps", "2", "--json"]
    for item in sets(optimizer, *layout, steps=2):
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 0, stderr[-3000:]
    rows = [r for r in json.loads((tmp_path / "run" / "validate.json").read_text())["rows"]
            if r["quantity"] == "optimizer"]
    assert len(rows) == layout[0] * layout[1] * layout[2]
    for row in rows:
        assert row["measured"] > 0
        assert abs(row["measured"] - row["predicted"]) <= 0.01 * row["predicted"], row
