"""Checkpoint bookkeeping without torch: tag names and pointers, the manifest and the records of
earlier releases, file checksums, what a resume refuses, and the pruning rule."""
import json

import pytest

from llmlaunch.launcher.checkpoints.checks import (batch_refusal, describe_state,
                                                   same_state_layout, state_layout)
from llmlaunch.launcher.checkpoints.digest import HashingWriter, file_problem, file_record
from llmlaunch.launcher.checkpoints.manifest import (LEGACY_MARKER, LEGACY_META, MANIFEST, Manifest,
                                                     TagProblem, read_manifest, write_manifest)
from llmlaunch.launcher.checkpoints.space import human_bytes
from llmlaunch.launcher.checkpoints.tags import (LATEST, TRUSTED, read_pointer, step_of,
                                                 tag_dirs, tag_for_step)
from llmlaunch.launcher.checkpoints.trust import Trust, prune_plan
from llmlaunch.launcher.entry import rank_environment
from llmlaunch.topology.layout import Layout

LAYOUT = {"dp": 2, "pp": 2, "tp": 1, "micro_batch": 2, "grad_accum": 4, "zero_stage": 1,
          "offload": "none"}


def manifest(step=10, **changes) -> Manifest:
    fields = dict(tag=tag_for_step(step), step=step, layout=LAYOUT, engine="pipeline",
                  model={"arch": "gpt2"}, global_batch=16, consumed_samples=16 * step,
                  adam_steps=step, tp=1, tensors=["embed.token.weight"], schedule=None,
                  files={"canonical/embed.token.weight/tp0.pt": {"bytes": 3, "sha256": "0" * 64}})
    return Manifest(**{**fields, **changes})


def test_tag_names_and_folders(tmp_path):
    assert tag_for_step(40) == "step00000040" and step_of("step00000040") == 40
    assert step_of("latest") is None and step_of("step12x") is None
    for name in ("step00000020", "step00000003", "notes", "step00000100"):
        (tmp_path / name).mkdir()
    (tmp_path / "step00000050").write_text("a file, not a tag")
    assert [p.name for p in tag_dirs(tmp_path)] == ["step00000003", "step00000020", "step00000100"]
    assert tag_dirs(tmp_path / "missing") == []


@pytest.mark.parametrize("content,why", [
    (b"\xff\xfe step\x00", "is not UTF-8 text"),
    (b"step00000099", "names step00000099, which is not there"),
    (b"{\"tag\": 1}", "does not name a tag"),
])
def test_a_torn_or_foreign_pointer_reads_as_absent_with_the_reason(tmp_path, content, why):
    (tmp_path / "step00000010").mkdir()
    (tmp_path / LATEST).write_bytes(content)
    tag, problem = read_pointer(tmp_path, LATEST)
    assert tag is None and why in problem and str(tmp_path / LATEST) in problem
    (tmp_path / LATEST).write_text("step00000010\n")
    assert read_pointer(tmp_path, LATEST) == ("step00000010", None)
    assert read_pointer(tmp_path, TRUSTED) == (None, None)


def test_the_manifest_round_trips_and_a_torn_one_names_itself(tmp_path):
    tag_dir = tmp_path / "step00000010"
    tag_dir.mkdir()
    written = manifest()
    write_manifest(tag_dir, written)
    assert read_manifest(tag_dir) == written
    assert json.loads((tag_dir / MANIFEST).read_text())["format"] == "llmlaunch-checkpoint-2"
    text = (tag_dir / MANIFEST).read_text()
    (tag_dir / MANIFEST).write_text(text[:len(text) // 2] + "\x01")    # torn, a control character
    with pytest.raises(TagProblem) as torn:
        read_manifest(tag_dir)
    assert torn.value.file == MANIFEST and "not valid JSON" in torn.value.why
    (tag_dir / MANIFEST).unlink()
    with pytest.raises(TagProblem, match="no manifest.json: a save that did not finish") as none:
        read_manifest(tag_dir)
    assert none.value.file is None
    write_manifest(tag_dir, manifest(step=20))
    with pytest.raises(TagProblem, match="describes step00000020, not this tag"):
        read_manifest(tag_dir)


def test_tags_of_earlier_releases_read_without_checksums(tmp_path):
    legacy = tmp_path / "step00000010"
    (legacy / "canonical").mkdir(parents=True)
    (legacy / LEGACY_MARKER).write_text(json.dumps({
        "tag": legacy.name, "step": 10, "layout": LAYOUT, "engine": "plain", "global_batch": 16,
        "consumed_samples": 160, "model": {"arch": "gpt2"}}))
    (legacy / LEGACY_META).write_text(json.dumps({
        "format": "llmlaunch-canonical-1", "step": 10, "adam_steps": 10, "engine": "plain",
        "layout": LAYOUT, "model": {"arch": "gpt2"}, "tensors": ["b", "a"], "tp": 2, "files": []}))
    got = read_manifest(legacy)
    assert (got.kind, got.files, got.engine, got.tensors, got.tp) == ("legacy", None, "plain",
                                                                     ["a", "b"], 2)
    assert got.canonical_files() == ["canonical/a/tp0.pt", "canonical/a/tp1.pt",
                                     "canonical/b/tp0.pt", "canonical/b/tp1.pt"]
    old = tmp_path / "step00000020"           # llmlaunch 0.1: a marker, DeepSpeed's files
    old.mkdir()
    (old / LEGACY_MARKER).write_text(json.dumps({"tag": old.name, "step": 20,
                                                 "layout": {"dp": 2, "pp": 1, "tp": 1}}))
    got = read_manifest(old)
    assert (got.kind, got.engine, got.tensors, got.model) == ("deepspeed", "pipeline", None, None)
    (old / LEGACY_MARKER).write_bytes(b'{"tag": "step0000\x00')
    with pytest.raises(TagProblem, match=LEGACY_MARKER):
        read_manifest(old)


def test_checksums_name_a_truncation_a_flipped_bit_and_a_deletion(tmp_path):
    path = tmp_path / "state.pt"
    with open(path, "wb") as f:
        writer = HashingWriter(f)
        writer.write(b"x" * 5000)
        writer.write(memoryview(b"yz" * 10))
    record = writer.record()
    assert record == file_record(path) and record["bytes"] == 5020
    assert file_problem(tmp_path, "state.pt", record) is None
    data = bytearray(path.read_bytes())
    data[2500] ^= 0x04
    path.write_bytes(data)
    assert "sha256 differs" in file_problem(tmp_path, "state.pt", record)
    path.write_bytes(data[:4000])
    assert "4000 bytes, the manifest says 5020" in file_problem(tmp_path, "state.pt", record)
    path.unlink()
    assert file_problem(tmp_path, "state.pt", record) == "state.pt: missing"


def test_what_the_state_depends_on():
    old = state_layout(Manifest(**{**manifest().__dict__, "layout": {"dp": 2, "pp": 1, "tp": 1,
                                                                      "zero_stage": 1}}))
    assert old == {"dp": 2, "pp": 1, "tp": 1, "zero_stage": 1, "offload": "none", "cp": 1,
                   "engine": "pipeline"}
    new = {**old, "engine": "plain"}
    assert not same_state_layout(old, new)
    assert same_state_layout(new, {**new, "micro_batch": 8})
    assert same_state_layout(new, {**new, "sequence_parallel": True})
    assert not same_state_layout(new, {**new, "cp": 2})     # ZeRO partitions over dp x cp
    assert describe_state(new) == "dp=2 pp=1 tp=1, ZeRO-1, plain engine"
    assert describe_state({**new, "cp": 2}) == "dp=2 pp=1 tp=1 cp=2, ZeRO-1, plain engine"


def test_another_global_batch_is_refused_with_the_fix():
    tag = manifest()                     # 2 x 4 x 2 = 16 sequences per step
    same = Layout(dp=4, pp=1, tp=1, micro_batch=2, grad_accum=2)
    assert batch_refusal(tag, same) is None
    more = Layout(dp=2, pp=2, tp=1, micro_batch=2, grad_accum=8)
    line = batch_refusal(tag, more)
    assert ("checkpoint step00000010 trained with a global batch of 16 sequences (micro_batch 2 x "
            "grad_accum 4 x dp 2), the run has 32 (micro_batch 2 x grad_accum 8 x dp 2)") in line
    assert "set layout.grad_accum=4" in line and "\n" not in line


def test_pruning_keeps_the_trusted_tag_and_everything_newer():
    # keep 2 of 10, 20, 30, 40; nothing trusted yet: no finished tag goes
    assert prune_plan([10, 20, 30, 40], [], keep=2, floor=None) == []
    assert prune_plan([10, 20, 30, 40], [], keep=2, floor=30) == [10, 20]
    # the newest trusted is 10: 20, 30, 40 may all be poison, so all stay
    assert prune_plan([10, 20, 30, 40], [], keep=1, floor=10) == []
    # crashed saves older than the newest finished tag go; one newer is being written
    assert prune_plan([10, 20], [15, 25], keep=1, floor=20) == [10, 15]


def test_trust_follows_healthy_steps(tmp_path):
    for step in (10, 20, 30):
        (tmp_path / tag_for_step(step)).mkdir()
    trust = Trust(tmp_path, healthy_steps=3, resumed=None)
    assert trust.floor() is None
    trust.committed(10)
    assert trust.observe(12, 2.0, 1.0) == (None, False)
    assert trust.observe(13, 2.0, 1.0) == (None, True)       # 11, 12, 13 followed step 10
    assert trust.floor() == 10 and (tmp_path / TRUSTED).read_text() == "step00000010"
    trust.committed(20)
    warning, moved = trust.observe(21, float("nan"), float("inf"))
    assert "step 21: loss nan and gradient norm inf are not both finite" in warning
    assert "pruning keeps step00000010" in warning and not moved
    assert trust.observe(22, float("nan"), None) == (None, False)    # one warning per streak
    for step in (23, 24, 25):
        assert trust.observe(step, 1.0, 1.0) == (None, False)  # 20 came before the bad steps
    trust.committed(30)
    assert [trust.observe(s, 1.0, 1.0)[1] for s in (31, 32, 33)] == [False, False, True]
    assert trust.floor() == 30
    # a run that resumed from 20 while `trusted` names 30 (which failed verification) keeps 20
    again = Trust(tmp_path, healthy_steps=3, resumed=20)
    assert again.floor() == 20
    assert again.observe(23, 1.0, 1.0) == (None, True) and again.floor() == 20
    assert (tmp_path / TRUSTED).read_text() == "step00000020"


def test_sizes_a_person_reads():
    assert [human_bytes(n) for n in (512, 4.4 * 2**20, 8_700_000, 1.25 * 2**30, 3 * 2**40)] == [
        "512 B", "4.4 MiB", "8.3 MiB", "1.25 GiB", "3 TiB"]


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
