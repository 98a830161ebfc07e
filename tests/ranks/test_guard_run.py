"""The guard on real ranks (tiny-cpu: dp 2 x pp 2, ZeRO-1, fp32 on gloo): a NaN gradient injected on
one rank and a persistent loss spike are skipped and rolled back by every rank alike, the losses
after them equal a run that never trained those batches, a requeue skips them again, and a run
that diverges stops with one line and a non-zero exit. Faults come through LLMLAUNCH_GUARD_INJECT
(launcher/guarded_step.py), hooks rather than real faults."""
import json
import shutil

import pytest

from train_job import Job  # tests/helpers (conftest puts it on sys.path)

SETS = ("train.steps=14", "checkpoint.every=4", "train.guard.min_history=3", "train.log_every=20",
        "train.stragglers.every=4")
# step 5: a NaN in one gradient of rank 1; steps 9-11: the loss the guard sees is 1.8x (a spike
# below the divergence cap): two are skipped, the third rolls back to step 8's tag
FAULTS = "nan-grad@5:1,spike@9-11:1.8"
SKIPPED = [[5, 5], [9, 11]]


def records(run_dir):
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def trained(run_dir, steps):
    got = records(run_dir)
    return [(s, got[s]["loss"], got[s]["grad_norm"], got[s]["lr"]) for s in steps]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faulty") / "run"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LLMLAUNCH_GUARD_INJECT", FAULTS)
        job = Job(run_dir, *SETS)
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    return run_dir, job.output()


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The same run that never trains the batches of steps 5 and 9-11 (the record given before it
    starts, as an operator would write it)."""
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "skipped.json").write_text(json.dumps({"ranges": SKIPPED}))
    with pytest.MonkeyPatch.context() as env:   # rank 2 sleeps 100 ms in each forward
        env.setenv("LLMLAUNCH_STRAGGLER_INJECT", "2:0.1")
        job = Job(run_dir, *SETS)
    assert job.wait(timeout=400) == 0, job.output()[-3000:]
    return run_dir, job.output()


def test_every_rank_skips_the_nan_gradient_step_and_the_spike_rolls_back(faulty):
    run_dir, output = faulty
    got = records(run_dir)
    assert got[5]["guard"]["action"] == "skip" and "not finite" in got[5]["guard"]["reason"]
    assert [got[s]["guard"]["action"] for s in (9, 10, 11)] == ["skip", "skip", "rollback"]
    assert got[11]["guard"]["to"] == 8 and "spike" in got[11]["guard"]["reason"]
    assert not any("guard" in got[s] for s in (1, 2, 3, 4, 6, 7, 8, 12, 13, 14))
    for rank in range(4):
        log = (run_dir / "logs" / f"rank{rank:05d}.log").read_text()
        assert "guard: step 5 skipped (DeepSpeed skipped the update" in log
        assert "guard: steps 9-11 unhealthy (loss spike" in log
        assert "rolling back to step00000008" in log
    record = json.loads((run_dir / "skipped.json").read_text())
    assert record["ranges"] == SKIPPED and record["rollbacks"] == 1
    tags = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert tags == ["step00000004", "step00000008", "step00000012", "step00000014"]   # none trusted


def test_losses_after_the_skips_equal_a_run_that_never_saw_those_batches(faulty, clean):
    run_dir, _ = faulty
    clean, _ = clean
    assert sorted(records(clean)) == [1, 2, 3, 4, 6, 7, 8, 12, 13, 14]
    steps = [1, 2, 3, 4, 6, 7, 8, 12, 13, 14]
    assert trained(run_dir, steps) == trained(clean, steps)     # bit for bit, lr included
    # a skipped step moves no schedule: step 6 applies the rate step 5 would have, and after the
    # rollback to step 8 step 12 applies step 9's
    got = records(run_dir)
    assert got[6]["lr"] == got[5]["lr"] != got[4]["lr"]
    assert got[12]["lr"] == got[9]["lr"] != got[8]["lr"]


def test_a_requeue_skips_the_recorded_range_again(faulty, tmp_path):
    run_dir, _ = faulty
    again = tmp_path / "run"
    (again / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "data", again / "data")
    shutil.copytree(run_dir / "checkpoints" / "step00000008", again / "checkpoints" / "step00000008")
    shutil.copy(run_dir / "skipped.json", again / "skipped.json")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (again / "metrics.jsonl").write_text("\n".join(lines[:8]) + "\n")
    job = Job(again, *SETS)
    assert job.wait(timeout=300) == 0, job.output()[-3000:]
    assert "guard: batches of steps 9-11 skipped" in job.output()
    assert trained(again, [12, 13, 14]) == trained(run_dir, [12, 13, 14])


def test_a_diverging_run_stops_with_one_line_and_a_non_zero_exit(tmp_path):
    job = Job(tmp_path / "run", "train.steps=30", "train.lr=1", "train.min_lr=0.1",
              "train.warmup_steps=0", "layout.zero_stage=0", "checkpoint.every=0")
    code = job.wait(timeout=300)
    out = job.output()
    assert code not in (0, 75), out[-3000:]
    stops = [line for line in out.splitlines() if "guard: training stopped at step" in line]
    assert stops, out[-3000:]
    assert "unhealthy steps in a row" in stops[-1]


def test_a_slowed_rank_is_named_within_a_period(clean):
    run_dir, output = clean
    got = records(run_dir)
    # the first period: steps 2-4 (a start's first step is left out); rank 2's forward sleeps
    # 4 x 0.1 s a step against its replica's few ms: about twice the pair's median
    assert [s["rank"] for s in got[4]["stragglers"]] == [2]
    assert got[4]["stragglers"][0]["ratio"] > 1.5
    assert "stragglers over steps 2-4: rank 2 on " in output
    from llmlaunch.report.run_page import run_page_html

    assert 'id="stragglers"' in run_page_html(run_dir)
