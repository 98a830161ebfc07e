"""`llmlaunch checkpoint inspect|convert`, `export-hf` and `plan --from-checkpoint` on checkpoints
written here in the layout-free format ranks write (canonical.py), without ranks: random fp32
weights and Adam moments per canonical tensor, sliced for the writing layout's TP degree."""
from __future__ import annotations

import json

import pytest
import torch

from llmlaunch.cli import main
from llmlaunch.config import RunConfig, dump_run_config
from llmlaunch.launcher.canonical import (CANONICAL_DIR, META_FILE, CanonicalReader, tensor_file,
                                          write_meta)
from llmlaunch.launcher.checkpoint import LATEST, MARKER, tag_for_step
from llmlaunch.launcher.checkpoint_tools import (convert, inspect, parse_layout, resolve_tag,
                                                 resume_source)
from llmlaunch.model.sharding import canonical_shapes, shard_tensor, tp_split
from llmlaunch.topology.model_spec import ModelSpec

SPEC = ModelSpec(arch="llama", layers=3, hidden=32, heads=8, kv_heads=4, vocab=96, seq_len=16,
                 ffn_hidden=64, name="tiny llama")
GLOBAL_BATCH = 8


def full_state(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {name: {key: torch.randn(shape, generator=g) for key in ("param", "exp_avg", "exp_avg_sq")}
            for name, shape in canonical_shapes(SPEC).items()}


def write_tag(ckpt_dir, step: int, layout: dict, state: dict, complete: bool = True):
    """A checkpoint tag as `llmlaunch train` writes its layout-free half (no DeepSpeed files)."""
    tag_dir = ckpt_dir / tag_for_step(step)
    tp = layout["tp"]
    for name, tensors in state.items():
        split = tp_split(SPEC, name)
        for rank in range(tp):
            path = tensor_file(tag_dir, name, rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: shard_tensor(v, split, rank, tp).clone() for k, v in tensors.items()}, path)
    write_meta(tag_dir, spec=SPEC, layout=layout, engine="pipeline", step=step, adam_steps=step,
               names=sorted(state), tp=tp)
    if complete:
        (tag_dir / MARKER).write_text(json.dumps({
            "tag": tag_dir.name, "step": step, "layout": {**layout, "zero_stage": 1},
            "engine": "pipeline", "global_batch": GLOBAL_BATCH, "model": SPEC.to_dict()}))
        (ckpt_dir / LATEST).write_text(tag_dir.name)
    return tag_dir


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as training leaves it: run.effective.yaml and checkpoints at steps 10 (tp 2)
    and 20 (tp 2), and a torn step 30 (no marker)."""
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
    layout = {"dp": 2, "pp": 2, "tp": 2}
    write_tag(run / "checkpoints", 10, layout, full_state(10))
    write_tag(run / "checkpoints", 20, layout, full_state(20))
    write_tag(run / "checkpoints", 30, layout, full_state(30), complete=False)
    (run / "checkpoints" / LATEST).write_text(tag_for_step(20))
    return run


def test_inspect_lists_every_tag_and_says_which_are_complete(run_dir, capsys):
    report = inspect(run_dir / "checkpoints")
    assert [t["tag"] for t in report["tags"]] == ["step00000010", "step00000020", "step00000030"]
    assert [t["complete"] for t in report["tags"]] == [True, True, False]
    assert [t["movable"] for t in report["tags"]] == [True, True, False]
    assert report["tags"][1]["layout"] == {"dp": 2, "pp": 2, "tp": 2}
    assert report["tags"][1]["zero_stage"] == 1 and report["latest"] == "step00000020"
    assert report["tags"][0]["size_bytes"] > 3 * SPEC.hidden * SPEC.vocab * 4
    assert main(["checkpoint", "inspect", str(run_dir / "checkpoints"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"][2]["complete"] is False
    assert main(["checkpoint", "inspect", str(run_dir / "checkpoints")]) == 0
    table = capsys.readouterr().out
    assert "dp 2 x pp 2 x tp 2" in table and "NO" in table


def test_a_torn_or_partial_checkpoint_is_never_converted(run_dir, tmp_path, capsys):
    torn = run_dir / "checkpoints" / "step00000030"
    with pytest.raises(ValueError, match=f"{MARKER}"):
        resolve_tag(torn)
    victim = tensor_file(run_dir / "checkpoints" / "step00000020", "blocks.1.attn.qkv.weight", 1)
    victim.unlink()
    assert main(["checkpoint", "convert", str(run_dir / "checkpoints" / "step00000020"),
                 "--layout", "dp=1,pp=1,tp=1", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blocks.1.attn.qkv.weight/tp1.pt" in err
    assert not (tmp_path / "out").exists()
    assert inspect(run_dir / "checkpoints")["tags"][1]["movable"] is False


def test_convert_reslices_every_tensor_and_round_trips(run_dir, tmp_path):
    src = run_dir / "checkpoints"            # the newest complete tag: step 20
    one = convert(src, parse_layout("dp=4,pp=1,tp=1"), tmp_path / "tp1")
    assert one.name == "step00000020" and (tmp_path / "tp1" / LATEST).read_text() == one.name
    back = convert(one, parse_layout("dp=1,pp=2,tp=4"), tmp_path / "tp4")
    want, mid, got = (CanonicalReader(p) for p in (src / "step00000020", one, back))
    assert mid.tp == 1 and got.tp == 4 and got.meta["adam_steps"] == 20
    state = full_state(20)
    for name in want.meta["tensors"]:
        for key in ("param", "exp_avg", "exp_avg_sq"):
            assert mid.full(name)[key].equal(state[name][key]), (name, key)
            assert got.full(name)[key].equal(state[name][key]), (name, key)
    # tp 4 files hold a quarter each (q/k/v heads split per group under GQA)
    qkv = torch.load(tensor_file(back, "blocks.0.attn.qkv.weight", 3), weights_only=True)
    assert qkv["param"].shape[0] == canonical_shapes(SPEC)["blocks.0.attn.qkv.weight"][0] // 4
    marker = json.loads((back / MARKER).read_text())
    assert marker["layout"]["tp"] == 4 and marker["engine"] == "none"
    with pytest.raises(FileExistsError):
        convert(src, parse_layout("dp=4,pp=1,tp=1"), tmp_path / "tp1")


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
    state = full_state(20)
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


def test_meta_names_every_file_it_expects(run_dir):
    meta = json.loads((run_dir / "checkpoints" / "step00000010" / CANONICAL_DIR / META_FILE).read_text())
    assert len(meta["files"]) == 2 * len(canonical_shapes(SPEC))
