"""The checkpoint store in one process (no ranks): which tag a resume takes when newer ones are
damaged, what it refuses, a tag's size against the bytes written, and a save into a full file
system (a small tmpfs mounted for the test: CI runs as root)."""
from __future__ import annotations

import subprocess

import pytest

from checkpoint_tags import file_listing, flip_bit, full_state, truncate, write_tag
from llmlaunch.launcher.checkpoints.canonical import tensor_file
from llmlaunch.launcher.checkpoints.checks import CheckpointError, model_refusal
from llmlaunch.launcher.checkpoints.manifest import LEGACY_MARKER, MANIFEST, read_manifest
from llmlaunch.launcher.checkpoints.space import directory_bytes, tag_bytes
from llmlaunch.launcher.checkpoints.tags import LATEST
from llmlaunch.launcher.checkpoints.verify import choose
from llmlaunch.topology.model_spec import ModelSpec

SPEC = ModelSpec(arch="llama", layers=2, hidden=32, heads=4, kv_heads=2, vocab=96, seq_len=16,
                 ffn_hidden=64)
GPT2 = ModelSpec(arch="gpt2", layers=2, hidden=32, heads=4, vocab=100, seq_len=16)
LAYOUT = {"dp": 1, "pp": 1, "tp": 2}


def tag(ckpt, step, spec=SPEC, **kwargs):
    return write_tag(ckpt, step, LAYOUT, full_state(spec, step), spec, 8, **kwargs)


def test_a_resume_passes_over_damaged_tags_naming_each_file(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (10, 20, 30, 40, 50, 60):
        tag(ckpt, step)
    tag(ckpt, 70, complete=False)                                      # a save that never finished
    flip_bit(tensor_file(ckpt / "step00000060", "blocks.1.mlp.gate_up.weight", 0))   # a flipped bit
    truncate(tensor_file(ckpt / "step00000050", "embed.token.weight", 1))           # a truncation
    tensor_file(ckpt / "step00000040", "final_norm.weight", 0).unlink()               # a deletion
    manifest = (ckpt / "step00000030" / MANIFEST).read_text()
    (ckpt / "step00000030" / MANIFEST).write_text(manifest[:200] + "\x07")           # a torn manifest
    (ckpt / LATEST).write_bytes(b"step000\xc3\x28")                                 # a non-UTF-8 latest
    choice = choose(ckpt)
    assert choice.manifest.tag == "step00000020" and choice.tag_dir == ckpt / "step00000020"
    lines = choice.lines()
    assert lines[0].startswith(f"{ckpt / LATEST} is not UTF-8 text")
    expected = [
        ("step00000070 is incomplete", "(no manifest.json: a save that did not finish)"),
        ("step00000060 failed verification", "canonical/blocks.1.mlp.gate_up.weight/tp0.pt: sha256 "
                                             "differs from the manifest's"),
        ("step00000050 failed verification", "canonical/embed.token.weight/tp1.pt: "),
        ("step00000040 failed verification", "canonical/final_norm.weight/tp0.pt: missing"),
        ("step00000030 failed verification", "manifest.json: not valid JSON"),
    ]
    for line, (head, why) in zip(lines[1:], expected):
        assert head in line and why in line and "resuming from step00000020" in line, line
        assert "\n" not in line
    assert "bytes, the manifest says" in lines[3]
    assert len(lines) == 6


def test_only_damaged_tags_refuse_rather_than_train_over_them(tmp_path):
    ckpt = tmp_path / "checkpoints"
    tag(ckpt, 10)
    flip_bit(tensor_file(ckpt / "step00000010", "head.weight", 1))
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be resumed: step00000010 "
                                              r"\(canonical/head.weight/tp1.pt: sha256 differs"):
        choose(ckpt)
    assert choose(tmp_path / "nothing") is None
    tag(tmp_path / "fresh", 10, complete=False)      # only an unfinished first save: start afresh
    assert choose(tmp_path / "fresh") is None


def test_a_tag_without_checksums_is_used_and_said_once(tmp_path):
    ckpt = tmp_path / "checkpoints"
    tag(ckpt, 10, legacy=True)
    tag(ckpt, 20, legacy=True)
    tensor_file(ckpt / "step00000020", "blocks.0.attn.qkv.weight", 1).unlink()
    choice = choose(ckpt)
    assert choice.manifest.tag == "step00000010" and choice.manifest.kind == "legacy"
    lines = choice.lines()
    assert "step00000020 failed verification (canonical/blocks.0.attn.qkv.weight/tp1.pt: missing)" \
        in lines[0]
    assert sum("carry no checksums" in line for line in lines) == 1
    assert (ckpt / "step00000010" / LEGACY_MARKER).is_file()


def test_another_model_names_the_tensor_and_both_shapes(tmp_path):
    written = read_manifest(tag(tmp_path / "checkpoints", 10))
    assert model_refusal(written, SPEC) is None
    line = model_refusal(written, ModelSpec(**{**SPEC.to_dict(), "hidden": 64}))
    assert line.startswith("checkpoint step00000010 holds another model: embed.token.weight is "
                           "[96, 32] in the checkpoint and [96, 64] in the model (model.hidden "
                           "32 -> 64")
    line = model_refusal(written, ModelSpec(**{**SPEC.to_dict(), "layers": 3}))
    assert "blocks.2.ln1.weight is absent in the checkpoint and [32] in the model" in line


def run_config(**layout):
    from llmlaunch.config import RunConfig

    config = RunConfig()
    for key, value in SPEC.to_dict().items():
        setattr(config.model, key, value)
    for key, value in {"dp": 1, "pp": 1, "tp": 2, "micro_batch": 2, "grad_accum": 4,
                       **layout}.items():
        setattr(config.layout, key, value)
    return config.validate()


def store_for(ckpt, config):
    from llmlaunch.launcher.checkpoints.store import CheckpointStore
    from llmlaunch.model.rank_context import RankContext

    layout = config.layout_obj()
    return CheckpointStore(ckpt, config, RankContext(layout, rank=0, world=layout.world_size))


def test_a_resume_refuses_another_shape_or_global_batch_before_any_engine(tmp_path):
    """What every rank raises in store.choose(), before the engine is built (one line each)."""
    ckpt = tmp_path / "checkpoints"
    write_tag(ckpt, 10, {"dp": 1, "pp": 1, "tp": 2, "micro_batch": 2, "grad_accum": 4},
              full_state(SPEC, 1), SPEC, 8)
    before = file_listing(ckpt)
    assert store_for(ckpt, run_config()).choose().manifest.tag == "step00000010"
    config = run_config()
    config.model.hidden = 64
    with pytest.raises(CheckpointError) as shape:
        store_for(ckpt, config.validate()).choose()
    assert str(shape.value).startswith(
        "checkpoint step00000010 holds another model: embed.token.weight is [96, 32] in the "
        "checkpoint and [96, 64] in the model (model.hidden 32 -> 64")
    with pytest.raises(CheckpointError) as batch:
        store_for(ckpt, run_config(grad_accum=8)).choose()
    assert str(batch.value).startswith(
        "checkpoint step00000010 trained with a global batch of 8 sequences (micro_batch 2 x "
        "grad_accum 4 x dp 1), the run has 16 (micro_batch 2 x grad_accum 8 x dp 1)")
    assert "set layout.grad_accum=4" in str(batch.value)
    moved = run_config(dp=2, tp=1, grad_accum=2)       # the same 8 sequences on another layout
    assert store_for(ckpt, moved).choose() is not None
    moved.checkpoint.reshard = "never"
    with pytest.raises(CheckpointError, match="written with dp=1 pp=1 tp=2, ZeRO-1, pipeline "
                                              "engine but the run uses dp=2 pp=1 tp=1, ZeRO-0, "
                                              "plain engine, and checkpoint.reshard is never"):
        store_for(ckpt, moved).choose()
    assert file_listing(ckpt) == before


@pytest.mark.parametrize("spec,tp", [(SPEC, 2), (GPT2, 1), (GPT2, 2)])
def test_a_tags_size_is_known_before_it_is_written(tmp_path, spec, tp):
    tag_dir = write_tag(tmp_path / "c", 10, {"dp": 1, "pp": 1, "tp": tp}, full_state(spec, 1), spec, 8)
    written = directory_bytes(tag_dir)
    estimate = tag_bytes(spec, tp, read_manifest(tag_dir).layout)
    assert written <= estimate <= written * 1.03, (written, estimate)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs one and a half tags big, mounted for the test."""
    mount = tmp_path / "small"
    mount.mkdir()
    size = int(tag_bytes(SPEC, 2) * 1.5)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_save_into_a_full_disk_names_the_path_and_the_space(small_disk):
    ckpt = small_disk / "checkpoints"
    tag(ckpt, 10)
    with pytest.raises(CheckpointError) as full:
        tag(ckpt, 20)
    message = str(full.value)
    assert message.startswith("checkpoint step00000020 not saved: no space left on device writing "
                              f"{ckpt / 'step00000020' / 'canonical'}")
    need = tag_bytes(SPEC, 2)
    assert f"a tag needs {need / 2**10:.3g} KiB" in message and "is free on" in message
    assert "step00000010 stays the latest checkpoint" in message and "\n" not in message
    assert (ckpt / LATEST).read_text() == "step00000010"
    assert not (ckpt / "step00000020").exists()          # the partial tag is gone
    assert choose(ckpt).manifest.tag == "step00000010"


def test_preflight_counts_every_file_of_a_tag_in_sizes_a_person_reads(tmp_path):
    from llmlaunch.config import load_run_config
    from llmlaunch.launcher.preflight import checkpoint_bytes, disk_check

    config = load_run_config("tiny-cpu")
    tag = checkpoint_bytes(config, "fp32")
    assert tag == tag_bytes(config.model_spec(), 1) and 3.1 * 2**20 < tag < 3.3 * 2**20
    check = disk_check(config, tmp_path, "fp32")
    assert check.ok
    assert f"{(config.checkpoint.keep + 1) * tag / 2**20:.3g} MiB needed (2 kept + 1 being " \
           "written, 3.2 MiB each)" in check.detail
    assert " free at " in check.detail and "GiB" in check.detail.split(" free at ")[0]
