"""Checkpoint bookkeeping: complete-or-absent, latest-good, retention, layout guard (no DeepSpeed)."""
import json

import pytest

from llmlaunch.launcher.checkpoint import (LATEST, MARKER, CheckpointError, check_layout,
                                          checkpoint_state_layout, complete_tags, describe_state,
                                          latest_good, mark_complete, prune, same_state_layout,
                                          tag_for_step)
from llmlaunch.launcher.entry import rank_environment


def fake_save(ckpt, step, complete=True, layout=None):
    tag = tag_for_step(step)
    (ckpt / tag).mkdir(parents=True)
    (ckpt / tag / "mp_rank_00_model_states.pt").write_text("x")
    if complete:
        mark_complete(ckpt, tag, {"tag": tag, "step": step, "layout": layout or {"dp": 2, "pp": 2, "tp": 1}})
    return tag


def test_latest_points_only_at_complete_checkpoints(tmp_path):
    fake_save(tmp_path, 10)
    fake_save(tmp_path, 20, complete=False)  # a crash mid-write
    tag, record = latest_good(tmp_path)
    assert tag == tag_for_step(10) and record["step"] == 10
    assert (tmp_path / LATEST).read_text() == tag_for_step(10)


def test_marker_without_latest_update_is_still_found(tmp_path):
    fake_save(tmp_path, 10)
    tag = tag_for_step(20)
    (tmp_path / tag).mkdir()
    (tmp_path / tag / MARKER).write_text(json.dumps({"tag": tag, "step": 20, "layout": {}}))
    assert latest_good(tmp_path)[0] == tag  # crash between the marker and `latest`


def test_no_checkpoint(tmp_path):
    assert latest_good(tmp_path / "missing") is None


def test_prune_keeps_the_newest_and_removes_crashed_saves(tmp_path):
    for step in (10, 20, 30):
        fake_save(tmp_path, step)
    fake_save(tmp_path, 25, complete=False)
    deleted = prune(tmp_path, keep=2)
    assert sorted(deleted) == [tag_for_step(10), tag_for_step(25)]
    assert complete_tags(tmp_path) == [tag_for_step(20), tag_for_step(30)]


def test_layout_mismatch_names_both_layouts():
    record = {"tag": "step00000010", "layout": {"dp": 2, "pp": 2, "tp": 1}}
    check_layout(record, {"dp": 2, "pp": 2, "tp": 1})
    with pytest.raises(CheckpointError, match="written with dp=2 pp=2 tp=1 but the run uses dp=4 "
                                              "pp=1 tp=1"):
        check_layout(record, {"dp": 4, "pp": 1, "tp": 1})


def test_what_deepspeeds_files_depend_on():
    old = checkpoint_state_layout({"layout": {"dp": 2, "pp": 1, "tp": 1, "zero_stage": 1}})
    assert old == {"dp": 2, "pp": 1, "tp": 1, "zero_stage": 1, "offload": "none",
                   "engine": "pipeline"}                     # llmlaunch 0.1 markers
    new = checkpoint_state_layout({"engine": "plain", "layout": {
        "dp": 2, "pp": 1, "tp": 1, "zero_stage": 1, "offload": "none", "micro_batch": 4}})
    assert not same_state_layout(old, new)                   # the engine differs
    assert same_state_layout(new, {**new, "micro_batch": 8})  # micro-batch does not matter
    assert describe_state(new) == "dp=2 pp=1 tp=1, ZeRO-1, plain engine"


def test_rank_environment_from_slurm():
    env = rank_environment({"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
                            "MASTER_ADDR": "node1", "MASTER_PORT": "1234"})
    assert env == {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        rank_environment({"RANK": "0", "WORLD_SIZE": "1"})
    # a RANK exported by the submitting shell does not override the Slurm task's
    stale = rank_environment({"RANK": "0", "WORLD_SIZE": "1", "SLURM_PROCID": "2", "SLURM_NTASKS": "4",
                              "SLURM_LOCALID": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert stale == {"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "4"}
    # under torch's elastic launcher inside an allocation, its RANK wins
    elastic = rank_environment({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "0",
                                "SLURM_NTASKS": "1", "TORCHELASTIC_RUN_ID": "x", "MASTER_ADDR": "h",
                                "MASTER_PORT": "1"})
    assert elastic == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8"}
