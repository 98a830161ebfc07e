"""`plan --hf-config` and `cost --hf-config` on real-shaped configs of every family: the parameter
count is transformers' own (the model built on the meta device), the formula agrees with it, MoE
costs use the active count, and what transformers cannot build is one clear line."""
from __future__ import annotations

import json

import pytest

from family_configs import CONFIGS, EXACT  # tests/helpers
from llmlaunch.cli import main
from llmlaunch.model.hf_count import count_hf_params, normalised_hf_config
from llmlaunch.topology.hf_config import spec_from_hf_config
from llmlaunch.topology.params import total_params

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_count_equals_the_formula(name):
    cfg = CONFIGS[name]
    exact = count_hf_params(cfg)
    assert exact == EXACT[name]
    # transformers' reading (defaults filled in) and the raw config.json give the same shape
    assert spec_from_hf_config(normalised_hf_config(cfg)) == spec_from_hf_config(cfg)
    assert total_params(spec_from_hf_config(cfg)) == exact


def write(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(CONFIGS[name]))
    return str(tmp_path / name)


@pytest.mark.parametrize("name", ["qwen3-8b", "gemma2-9b", "mixtral-8x7b"])
def test_plan_answers_with_the_exact_count(name, tmp_path, capsys):
    assert main(["plan", "--hf-config", write(tmp_path, name), "--gpus", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["params"] == EXACT[name] and out["candidates"]
    if name == "mixtral-8x7b":
        assert out["model"]["active_params"] == 12_879_925_248
        assert any("experts" in note for note in out["model"]["approximations"])
    if name == "qwen3-8b":
        assert out["model"]["approximations"] == []


def test_mixtral_plan_text_cost_and_emit(tmp_path, capsys):
    path = write(tmp_path, "mixtral-8x7b")
    assert main(["plan", "--hf-config", path, "--gpus", "64", "--top", "1"]) == 0
    text = capsys.readouterr().out
    assert "12.88B of 46.70B parameters active per token" in text
    assert "approx   MoE: each GPU holds 8/ep experts" in text
    assert main(["cost", "--hf-config", path, "--tokens", "1e12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 46_702_792_704 and out["active_params"] == 12_879_925_248
    assert out["flops_6nd"] == pytest.approx(6 * 12_879_925_248 * 1e12)
    assert out["flops"] > out["flops_6nd"]        # model FLOPs: the active experts plus attention
    assert main(["plan", "--hf-config", path, "--gpus", "64", "--emit",
                 str(tmp_path / "out")]) == 0          # mixtral runs: its layout is emitted
    assert "experts: 8" in (tmp_path / "out" / "run.yaml").read_text()


def test_mixtral_config_plan_with_expert_parallelism(tmp_path, capsys):
    """Issue 14: a plan of the real-shaped Mixtral config with ep > 1 prints the expert groups and
    the all-to-all time (46.70B total, 12.88B active)."""
    path = write(tmp_path, "mixtral-8x7b")
    assert main(["plan", "--hf-config", path, "--gpus", "64", "--ep", "8", "--top", "1"]) == 0
    text = capsys.readouterr().out
    assert "12.88B of 46.70B parameters active per token" in text
    assert "expert   groups: 8 of 8 ranks" in text      # 64 GPUs / ep 8
    assert "EP all-to-all (ep=8, capacity factor 1)" in text


@pytest.mark.parametrize("cfg, needle", [
    ({"model_type": "nosuchmodel", "hidden_size": 64}, "cannot read model_type 'nosuchmodel'"),
    ({"model_type": "t5", "d_model": 64}, "cannot build a causal language model of model_type 't5'"),
])
def test_what_transformers_cannot_build_is_one_clear_line(cfg, needle, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["plan", "--hf-config", str(tmp_path), "--gpus", "8"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_a_generic_decoder_gets_a_plan(tmp_path, capsys):
    """A model_type without a reader of its own (OLMo-2 7B's shape) plans with its exact count."""
    cfg = {"model_type": "olmo2", "hidden_size": 4096, "intermediate_size": 11008,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
           "vocab_size": 100352, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
           "rope_theta": 500000, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["plan", "--hf-config", str(tmp_path), "--gpus", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["params"] == 7_298_617_344 and out["model"]["arch"] == "decoder"
    notes = out["model"]["approximations"]
    # OLMo-2's QK-norm spans the whole q and k width (2 x 4096 a layer), not modelled: 0.0036%
    assert notes[0].startswith("parameter formula 7,298,355,200 vs transformers' 7,298,617,344")


def test_deepseek_v3_scaled_down_equals_transformers():
    """DeepSeek-V3's family at a small size (the query and KV latents, a first dense layer, the
    shared expert): transformers' count of the built model equals the formula."""
    from family_configs import DEEPSEEK_V3_SMALL

    assert count_hf_params(DEEPSEEK_V3_SMALL) == total_params(spec_from_hf_config(DEEPSEEK_V3_SMALL))
    assert count_hf_params(DEEPSEEK_V3_SMALL) == 50_554_496


def test_deepseek_v3_plans_with_its_exact_count_without_allocating(tmp_path, capsys):
    """The published DeepSeek-V3 config.json: 671,026,404,352 parameters (transformers' count on
    the meta device, from the start: it used to create the fused expert tensors on the CPU first,
    30 GB; the plan itself reads the same count off the config's shapes), 37.55B active; the
    process's peak memory grows by well under a GB."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    args = ["plan", "--hf-config", write(tmp_path, "deepseek-v3"), "--gpus", "256", "--gpu",
            "h100-80gb", "--seq-len", "4096", "--pp", "16", "--ep", "8", "--engine",
            "megatron-core", "--precision", "fp8", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["params"] == 671_026_404_352 == EXACT["deepseek-v3"]
    assert out["model"]["params_source"] == "exact, from the config's shapes"
    assert count_hf_params(CONFIGS["deepseek-v3"]) == EXACT["deepseek-v3"]
    assert round(out["model"]["active_params"] / 1e9, 2) == 37.55
    assert out["candidates"] and out["engine"] == "megatron-core"
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 1e9
