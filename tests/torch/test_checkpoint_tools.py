"""`llmlaunch checkpoint inspect|convert`, `export-hf` and `plan --from-checkpoint` on checkpoints
written here by the store's own writer (tests/helpers/checkpoint_tags.py), without ranks."""
from __future__ import annotations

import json
import os

import pytest
import torch

from checkpoint_tags import file_listing, flip_bit, full_state, truncate, write_tag
from llmlaunch.cli import main
from llmlaunch.config import RunConfig, dump_run_config
from llmlaunch.launcher.checkpoints.canonical import CanonicalReader, tensor_file
from llmlaunch.launcher.checkpoints.manifest import MANIFEST, read_manifest
from llmlaunch.launcher.checkpoints.tags import LATEST, tag_for_step
from llmlaunch.launcher.checkpoints.tools import (convert, inspect, parse_layout, resolve_tag,
                                                  resume_source)
from llmlaunch.launcher.checkpoints.verify import verify_tag
from llmlaunch.model.sharding import canonical_shapes
from llmlaunch.topology.model_spec import ModelSpec

SPEC = ModelSpec(arch="llama", layers=3, hidden=32, heads=8, kv_heads=4, vocab=96, seq_len=16,
                 ffn_hidden=64, name="tiny llama")
GLOBAL_BATCH = 8
LAYOUT = {"dp": 2, "pp": 2, "tp": 2}


def tag(ckpt, step, **kwargs):
    return write_tag(ckpt, step, LAYOUT, full_state(SPEC, step), SPEC, GLOBAL_BATCH, **kwargs)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as training leaves it: run.effective.yaml and checkpoints at steps 10 and
    20 (tp 2), and a step 30 whose save did not finish (no manifest)."""
    run = tmp_path / "run"
    config = RunConfig()
    for key, value in SPEC.to_dict().items():
        setattr(config.model, key, value)
    config.layout.dp, config.layout.pp, config.layout.tp = 2, 2, 2
    config.layout.micro_batch, config.layout.grad_accum = 2, 2
    config.train.steps, config.train.lr = 500, 1e-3
    config.data.path = "data/corpus"
    config.validate()
    run.mkdir()
    (run / "run.effective.yaml").write_text(dump_run_config(config))
    tag(run / "checkpoints", 10)
    tag(run / "checkpoints", 20)
    tag(run / "checkpoints", 30, complete=False)
    return run


def test_inspect_lists_every_tag_and_says_which_are_complete(run_dir, capsys):
    report = inspect(run_dir / "checkpoints")
    assert [t["tag"] for t in report["tags"]] == ["step00000010", "step00000020", "step00000030"]
    assert [t["complete"] for t in report["tags"]] == [True, True, False]
    assert [t["movable"] for t in report["tags"]] == [True, True, False]
    assert [t["verified"] for t in report["tags"]] == [None, None, None]     # not asked
    assert report["tags"][1]["layout"] == {"dp": 2, "pp": 2, "tp": 2, "ep": 1}
    assert report["tags"][1]["zero_stage"] == 1 and report["latest"] == "step00000020"
    assert report["tags"][0]["size_bytes"] > 3 * SPEC.hidden * SPEC.vocab * 4
    assert main(["checkpoint", "inspect", str(run_dir / "checkpoints"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"][2]["complete"] is False
    assert main(["checkpoint", "inspect", str(run_dir / "checkpoints")]) == 0
    table = capsys.readouterr().out
    assert "dp 2 x pp 2 x tp 2" in table and "NO" in table and "KiB" in table


def test_inspect_verify_names_the_corrupt_file_of_each_tag(run_dir, capsys):
    ckpt = run_dir / "checkpoints"
    assert main(["checkpoint", "inspect", str(ckpt), "--verify"]) == 0
    assert "yes" in capsys.readouterr().out
    flip_bit(tensor_file(ckpt / "step00000020", "blocks.1.mlp.down.weight", 1))
    assert main(["checkpoint", "inspect", str(ckpt), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "CORRUPT" in out
    assert ("step00000020: canonical/blocks.1.mlp.down.weight/tp1.pt: sha256 differs from the "
            "manifest's") in out
    report = inspect(ckpt, verify=True)
    assert [t["verified"] for t in report["tags"]] == [True, False, False]
    assert report["tags"][1]["movable"] is False
    assert report["tags"][2]["problem"].startswith("incomplete: no manifest.json")


def test_a_torn_or_partial_checkpoint_is_never_converted(run_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"is not complete \(no manifest.json: a save that did not finish\)"):
        resolve_tag(run_dir / "checkpoints" / "step00000030")
    victim = tensor_file(run_dir / "checkpoints" / "step00000020", "blocks.1.attn.qkv.weight", 1)
    victim.unlink()
    assert main(["checkpoint", "convert", str(run_dir / "checkpoints" / "step00000020"),
                 "--layout", "dp=1,pp=1,tp=1", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blocks.1.attn.qkv.weight/tp1.pt: missing" in err
    assert not (tmp_path / "out").exists()
    # the directory's newest tag fails, so convert takes step 10 and says why
    assert main(["checkpoint", "convert", str(run_dir / "checkpoints"), "--layout",
                 "dp=1,pp=1,tp=1", str(tmp_path / "older")]) == 0
    err = capsys.readouterr().err
    assert ("checkpoint step00000020 failed verification (canonical/blocks.1.attn.qkv.weight/"
            "tp1.pt: missing); resuming from step00000010") in err
    assert (tmp_path / "older" / "step00000010").is_dir()


def test_a_truncated_file_of_a_tag_without_checksums_is_one_line(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    old = tag(ckpt, 10, legacy=True)          # llmlaunch 0.2: marker and meta, no checksums
    truncate(tensor_file(old, "blocks.0.attn.out.weight", 0))
    assert main(["checkpoint", "convert", str(old), "--layout", "dp=1,pp=1,tp=1",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("llmlaunch: error")]
    assert len(lines) == 1 and "Traceback" not in err
    assert ("checkpoint step00000010: canonical/blocks.0.attn.out.weight/tp0.pt: does not load "
            "(truncated or corrupt") in lines[0]
    assert "carry no checksums" in err and not (tmp_path / "out").exists()


def test_convert_reslices_every_tensor_and_round_trips(run_dir, tmp_path):
    src = run_dir / "checkpoints"            # the newest complete tag: step 20
    one = convert(src, parse_layout("dp=4,pp=1,tp=1"), tmp_path / "tp1")
    assert one.name == "step00000020" and (tmp_path / "tp1" / LATEST).read_text() == one.name
    back = convert(one, parse_layout("dp=1,pp=2,tp=4"), tmp_path / "tp4")
    mid, got = read_manifest(one), read_manifest(back)
    assert mid.tp == 1 and got.tp == 4 and got.adam_steps == 20 and got.engine == "none"
    assert got.layout["tp"] == 4 and got.converted_from == str(one)
    assert verify_tag(back)[1] is None        # the converted tag carries its own checksums
    want = CanonicalReader(src / "step00000020", read_manifest(src / "step00000020"))
    mid_r, got_r = CanonicalReader(one, mid), CanonicalReader(back, got)
    state = full_state(SPEC, 20)
    for name in want.tensors:
        for key in ("param", "exp_avg", "exp_avg_sq"):
            assert mid_r.full(name)[key].equal(state[name][key]), (name, key)
            assert got_r.full(name)[key].equal(state[name][key]), (name, key)
    # tp 4 files hold a quarter each (q/k/v heads split per group under GQA)
    qkv = torch.load(tensor_file(back, "blocks.0.attn.qkv.weight", 3), weights_only=True)
    assert qkv["param"].shape[0] == canonical_shapes(SPEC)["blocks.0.attn.qkv.weight"][0] // 4
    with pytest.raises(FileExistsError):
        convert(src, parse_layout("dp=4,pp=1,tp=1"), tmp_path / "tp1")


def test_convert_and_export_into_their_source_refuse_and_delete_nothing(run_dir, capsys):
    ckpt = run_dir / "checkpoints"
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    before = file_listing(run_dir)
    tag20 = ckpt / "step00000020"
    cases = [(tag20, tag20, "is the source tag"), (tag20, ckpt, "is the source checkpoint directory"),
             (ckpt, run_dir, "contains the source checkpoint directory"),
             (tag20, run_dir.parent, "contains the source checkpoint directory"),
             (ckpt, ckpt / "converted", "is inside the source checkpoint directory"),
             (ckpt, tag20 / "hf", "is inside the source checkpoint directory")]
    for src, dst, why in cases:
        for argv in (["checkpoint", "convert", str(src), "--layout", "dp=1,pp=1,tp=1", str(dst),
                      "--force"], ["export-hf", str(src), str(dst), "--force"]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert why in err, (argv, err)
            assert err.count("llmlaunch: error") == 1
    assert file_listing(run_dir) == before
    assert main(["export-hf", str(ckpt), str(run_dir / "hf")]) == 0   # beside it is fine


def test_written_directories_follow_the_umask(run_dir, tmp_path):
    old = os.umask(0o022)
    try:
        out = convert(run_dir / "checkpoints", parse_layout("dp=1,pp=1,tp=1"), tmp_path / "c")
        assert main(["export-hf", str(run_dir / "checkpoints"), str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    for folder in (tmp_path / "c", out, tmp_path / "hf"):
        assert oct(folder.stat().st_mode & 0o777) == oct(0o755), folder
    assert oct((out / MANIFEST).stat().st_mode & 0o777) == oct(0o644)


def test_convert_refuses_a_layout_the_model_cannot_take(run_dir, tmp_path):
    with pytest.raises(ValueError, match="tp"):
        convert(run_dir / "checkpoints", parse_layout("dp=1,pp=1,tp=3"), tmp_path / "bad")


@pytest.mark.parametrize("text", ["dp=2,pp=1", "dp=2,pp=1,tp=0", "dp=2;pp=1;tp=1", "ep=2,pp=1,tp=1"])
def test_layout_argument_errors_say_what_works(text):
    with pytest.raises(ValueError, match="dp=D,pp=P,tp=T|all of dp, pp and tp"):
        parse_layout(text)


def test_export_hf_from_a_layout_free_checkpoint_equals_its_weights(run_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    assert main(["export-hf", str(run_dir / "checkpoints"), str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    state = full_state(SPEC, 20)
    assert model.model.embed_tokens.weight.detach().equal(state["embed.token.weight"]["param"])
    assert model.lm_head.weight.detach().equal(state["head.weight"]["param"])
    assert main(["export-hf", str(run_dir / "checkpoints"), str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_plan_from_checkpoint_takes_its_model_and_batch_and_emits_a_resuming_run(run_dir, tmp_path,
                                                                                capsys):
    source = resume_source(run_dir / "checkpoints")
    assert source.spec.to_dict() == SPEC.to_dict() and source.global_batch == GLOBAL_BATCH and source.step == 20
    out = tmp_path / "resume"
    argv = ["plan", "--from-checkpoint", str(run_dir / "checkpoints"), "--gpus", "2", "--gpu", "cpu",
            "--gpus-per-node", "2"]
    assert main([*argv, "--emit", str(out)]) == 0
    text = capsys.readouterr().out
    assert "global batch 8 sequences and the model from" in text
    import yaml

    emitted = yaml.safe_load((out / "run.yaml").read_text())
    assert emitted["checkpoint"]["dir"] == str((run_dir / "checkpoints").resolve())
    assert emitted["data"]["path"] == str((run_dir / "data" / "corpus").resolve())
    assert emitted["train"]["steps"] == 500 and emitted["train"]["lr"] == 1e-3
    lay = emitted["layout"]
    assert lay["dp"] * lay["pp"] * lay["tp"] == 2
    assert lay["dp"] * lay["micro_batch"] * lay["grad_accum"] == GLOBAL_BATCH
    assert {k: emitted["model"][k] for k in ("layers", "hidden", "kv_heads")} == {
        "layers": 3, "hidden": 32, "kv_heads": 4}
    assert main([*argv, "--global-batch", "16"]) == 2
    assert "global batch of 8" in capsys.readouterr().err
    assert main([*argv, "--model", "gpt3-125m"]) == 2
    assert "not --model and --from-checkpoint" in capsys.readouterr().err


def test_the_manifest_names_every_file_with_its_checksum(run_dir):
    manifest = read_manifest(run_dir / "checkpoints" / tag_for_step(10))
    assert len(manifest.files) == 2 * len(canonical_shapes(SPEC))
    assert set(manifest.files) == set(manifest.canonical_files())
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in manifest.files.values())
