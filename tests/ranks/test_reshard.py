"""A checkpoint moves between layouts: every axis in both directions, and between the pipeline
and the plain (ZeRO-3) engine.

Each source run trains STEPS steps with a checkpoint at step K (`llmlaunch train`, real ranks).
Each target run starts from a copy of that step-K checkpoint on another layout, reshards on start,
and trains to STEPS: its losses equal the source run's over the same steps (fp32, relative 1e-5;
the global batch is unchanged, so the samples of every step are too).

The round trip pins DeepSpeed's accessors: a driver loads the source's layout-free state into an
engine of another layout, writes it back out through the same accessors, and the merged fp32
weights and Adam moments are equal tensors to the source's.

This file is also that driver (run as ranks by rank_harness).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))  # as a driver, too
from train_job import Job, losses  # noqa: E402

STEPS, K = 8, 4
RTOL = 1e-5
GLOBAL_BATCH, MICRO_BATCH = 16, 2
COMMON = [f"train.steps={STEPS}", f"checkpoint.every={K}", "checkpoint.keep=5",
          "train.log_every=1", f"layout.micro_batch={MICRO_BATCH}"]
# llama with grouped-query attention: the fused QKV slices differently under every tp
LLAMA = ["model.arch=llama", "model.layers=4", "model.hidden=64", "model.heads=8",
         "model.kv_heads=4", "model.vocab=1024", "model.seq_len=64"]
GPT2 = []          # tiny-cpu's own model: gpt2, its embedding tied to the head across stages


def layout_sets(dp, pp, tp, zero):
    return [f"layout.dp={dp}", f"layout.pp={pp}", f"layout.tp={tp}", f"layout.zero_stage={zero}",
            f"layout.grad_accum={GLOBAL_BATCH // (MICRO_BATCH * dp)}"]


# name -> (model, (dp, pp, tp, zero))
SOURCES = {
    "gpt2 one process": (GPT2, (1, 1, 1, 0)),
    "llama dp2 pp2 tp2": (LLAMA, (2, 2, 2, 1)),
    "llama zero3 dp2 tp2": (LLAMA, (2, 1, 2, 3)),
}
# (source, target layout, what moves)
MOVES = [
    ("gpt2 one process", (2, 1, 1, 0), "dp 1->2"),
    ("gpt2 one process", (1, 2, 1, 1), "pp 1->2 (plain -> pipeline, tied embedding split)"),
    ("gpt2 one process", (1, 1, 2, 0), "tp 1->2"),
    ("llama dp2 pp2 tp2", (1, 2, 2, 1), "dp 2->1"),
    ("llama dp2 pp2 tp2", (2, 1, 2, 3), "pp 2->1 (pipeline -> ZeRO-3)"),
    ("llama dp2 pp2 tp2", (2, 2, 1, 1), "tp 2->1"),
    ("llama dp2 pp2 tp2", (1, 2, 4, 1), "(2,2,2) -> (1,2,4)"),
    ("llama zero3 dp2 tp2", (1, 2, 2, 1), "ZeRO-3 -> pipeline"),
    ("llama zero3 dp2 tp2", (2, 1, 2, 3), "same layout (loaded as it is)"),
]
TAG = f"step{K:08d}"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> run directory of each source run (STEPS steps, checkpoints at K and STEPS)."""
    out = {}
    for name, (model, layout) in SOURCES.items():
        run_dir = tmp_path_factory.mktemp("source") / "run"
        job = Job(run_dir, *COMMON, *model, *layout_sets(*layout))
        assert job.wait(timeout=600) == 0, (name, job.output()[-3000:])
        assert [s for s, _ in losses(run_dir)] == list(range(1, STEPS + 1))
        out[name] = run_dir
    return out


def resume_on(source_dir: Path, run_dir: Path, model, layout) -> Job:
    """A new run directory holding only the source's step-K checkpoint (and its prepared data),
    trained to STEPS on `layout`."""
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copytree(source_dir / "checkpoints" / TAG, ckpt / TAG)
    (ckpt / "latest").write_text(TAG)
    shutil.copytree(source_dir / "data", run_dir / "data")
    return Job(run_dir, *COMMON, *model, *layout_sets(*layout))


@pytest.mark.parametrize("source,target,move", MOVES, ids=[m[2] for m in MOVES])
def test_resume_on_another_layout_equals_the_uninterrupted_run(tmp_path, sources, source, target,
                                                               move):
    model = SOURCES[source][0]
    run_dir = tmp_path / "run"
    job = resume_on(sources[source], run_dir, model, target)
    assert job.wait(timeout=600) == 0, (move, job.output()[-3000:])
    log = (run_dir / "logs" / "rank00000.log").read_text()
    dp, pp, tp, zero = target
    want = [loss for step, loss in losses(sources[source]) if step > K]
    got = losses(run_dir)
    assert [s for s, _ in got] == list(range(K + 1, STEPS + 1))
    if target == SOURCES[source][1]:       # the state loads as it was written: bit for bit
        assert "resumed from" in log and "resharded" not in log, log
        assert [loss for _, loss in got] == want
    else:
        assert f"from dp={SOURCES[source][1][0]}" in log and f"to dp={dp} pp={pp} tp={tp}" in log
        assert "resharded" in log
        assert [loss for _, loss in got] == pytest.approx(want, rel=RTOL), move
    record = json.loads((run_dir / "checkpoints" / f"step{STEPS:08d}" / "manifest.json").read_text())
    assert (record["layout"]["dp"], record["layout"]["pp"], record["layout"]["tp"]) == (dp, pp, tp)


# ---------------------------------------------------------------------------------------------
# the round trip through DeepSpeed's accessors

ROUND_TRIP_SOURCE = "llama dp2 pp2 tp2"
ROUND_TRIPS = {                        # 4 ranks: name -> (dp, pp, tp, zero, offload)
    "pipeline dp1 pp2 tp2": (1, 2, 2, 1, "none"),
    "zero3 dp2 tp2": (2, 1, 2, 3, "none"),
    "zero2 dp4 offload": (4, 1, 1, 2, "optimizer"),
    "zero0 dp2 tp2": (2, 1, 2, 0, "none"),
}


def round_trip_config(source_run: Path, dp, pp, tp, zero, offload):
    from llmlaunch.config import load_run_dir_config

    config = load_run_dir_config(source_run)
    for key, value in dict(dp=dp, pp=pp, tp=tp, zero_stage=zero, offload=offload,
                           grad_accum=GLOBAL_BATCH // (MICRO_BATCH * dp)).items():
        setattr(config.layout, key, value)
    return config.validate()


def driver_main():
    from rank_harness import finish_test_distributed, init_test_distributed, write_rank_result

    from llmlaunch.launcher.checkpoints.canonical import load_canonical_into
    from llmlaunch.launcher.checkpoints.manifest import read_manifest
    from llmlaunch.launcher.checkpoints.store import CheckpointStore
    from llmlaunch.launcher.engine import build_engine
    from llmlaunch.model.rank_context import RankContext

    parser = argparse.ArgumentParser()
    parser.add_argument("--source-run", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    init_test_distributed()
    tag_dir = args.source_run / "checkpoints" / TAG
    for name, layout in ROUND_TRIPS.items():
        config = round_trip_config(args.source_run, *layout)
        ctx = RankContext.from_environment(config.layout_obj())
        run = build_engine(config, ctx)
        load_canonical_into(run, tag_dir, read_manifest(tag_dir))
        store = CheckpointStore(args.out / name.replace(" ", "_"), config, ctx)
        store.save(run, K)            # written back out through the same accessors
        store.wait()
        del run
    write_rank_result({"done": list(ROUND_TRIPS)})
    finish_test_distributed()


def test_moved_weights_and_adam_moments_are_equal_tensors(tmp_path, sources):
    from rank_harness import run_ranks

    from llmlaunch.launcher.checkpoints.canonical import CanonicalReader
    from llmlaunch.launcher.checkpoints.manifest import read_manifest

    def reader(tag_dir):
        return CanonicalReader(tag_dir, read_manifest(tag_dir))

    source_run = sources[ROUND_TRIP_SOURCE]
    run = run_ranks(__file__, 4, ["--source-run", source_run, "--out", tmp_path], timeout_s=400,
                    results_dir=tmp_path / "results").check()
    assert sorted(run.results) == [0, 1, 2, 3]
    before = reader(source_run / "checkpoints" / TAG)
    assert before.manifest.adam_steps == K
    for name in ROUND_TRIPS:
        after = reader(tmp_path / name.replace(" ", "_") / TAG)
        assert after.tensors == before.tensors
        assert after.manifest.adam_steps == K, name
        for tensor in before.tensors:
            want, got = before.full(tensor), after.full(tensor)
            for key in ("param", "exp_avg", "exp_avg_sq"):
                assert got[key].shape == want[key].shape, (name, tensor, key)
                assert got[key].equal(want[key]), (name, tensor, key)


if __name__ == "__main__":
    driver_main()
