"""Reading the families' config.json (topology/hf_config.py, hf_families.py), what the planner says
it approximates (approximations.py), run.yaml's model.hf_config, and cost / scale for MoE. Pure:
the formula side; transformers' own counts of the same configs are tests/torch/test_hf_counts.py."""
import json

import pytest

from family_configs import CONFIGS, EXACT, PUBLISHED  # tests/helpers
from llmlaunch.cli import main
from llmlaunch.config import ConfigError, from_dict
from llmlaunch.topology.approximations import planning_notes
from llmlaunch.topology.hf_config import spec_from_hf_config, training_differences
from llmlaunch.topology.model_spec import untrainable_reasons
from llmlaunch.topology.params import active_params, total_params

@pytest.mark.parametrize("name", CONFIGS)
def test_formula_counts_every_family_exactly(name):
    spec = spec_from_hf_config(CONFIGS[name])
    assert total_params(spec) == EXACT[name]
    assert EXACT[name] / 1e9 == pytest.approx(PUBLISHED[name], rel=0.02)
    assert not [n for n in planning_notes(spec, EXACT[name]) if n.startswith("parameter formula")]


def test_family_features_are_read():
    read = {name: spec_from_hf_config(cfg) for name, cfg in CONFIGS.items()}
    assert read["qwen2-7b"].qkv_bias and not read["qwen2-7b"].sliding_window
    assert read["qwen2-0.5b"].tied_embeddings and not read["qwen2-7b"].tied_embeddings
    assert read["qwen3-8b"].qk_norm and read["qwen3-0.6b"].head_dim == 128
    assert read["qwen3-0.6b"].q_width == 2048 != read["qwen3-0.6b"].hidden
    mistral = read["mistral-7b-v0.1"]
    assert (mistral.kv_heads, mistral.sliding_window, mistral.windowed_layers) == (8, 4096, 32)
    gemma2 = read["gemma2-9b"]
    assert (gemma2.mlp, gemma2.block_norms, gemma2.head_dim, gemma2.windowed_layers) == (
        "geglu", 4, 256, 21)
    neox = read["gpt-neox-20b"]
    assert neox.parallel_residual and neox.rotary_fraction == 0.25 and neox.norm == "layernorm"
    mixtral = read["mixtral-8x7b"]
    assert (mixtral.experts, mixtral.experts_per_token, mixtral.expert_ffn_hidden) == (8, 2, 14336)
    assert active_params(mixtral, EXACT["mixtral-8x7b"]) == 12_879_925_248
    assert read["qwen3-8b"].seq_len == 8192 and spec_from_hf_config(CONFIGS["qwen3-8b"], 4096).seq_len == 4096


def test_runnable_families_train_as_read_and_the_others_say_why_not():
    for name in ("gpt2", "llama2-7b", "mistral-7b-v0.1", "qwen2-7b", "qwen2.5-14b", "qwen3-8b",
                 "mixtral-8x7b"):
        spec = spec_from_hf_config(CONFIGS[name])
        assert untrainable_reasons(spec) + training_differences(CONFIGS[name], spec) == [], name
    for name in ("phi3-mini-4k", "gemma2-9b", "gpt-neox-20b"):
        assert "planned only" in untrainable_reasons(spec_from_hf_config(CONFIGS[name]))[0]
    scaled = dict(CONFIGS["llama2-7b"], rope_scaling={"rope_type": "linear", "factor": 2.0})
    assert training_differences(scaled, spec_from_hf_config(scaled)) == ["RoPE scaling 'linear'"]


def test_unknown_and_broken_configs_are_one_clear_line():
    with pytest.raises(ValueError, match="--hf-config 'x': missing key 'vocab_size' for model_type"):
        spec_from_hf_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 4}, source="x", label="--hf-config")
    with pytest.raises(ValueError, match="encoder-decoder"):
        spec_from_hf_config({"model_type": "t5", "is_encoder_decoder": True})
    generic = spec_from_hf_config({"model_type": "olmo2", "hidden_size": 64, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "intermediate_size": 160,
                                   "vocab_size": 100, "rms_norm_eps": 1e-6})
    assert generic.arch == "decoder" and generic.rms_norm


def test_approximation_notes_say_what_and_how_much():
    mixtral = spec_from_hf_config(CONFIGS["mixtral-8x7b"])
    notes = planning_notes(mixtral, EXACT["mixtral-8x7b"])
    assert any("8/ep experts" in n and "% of a layer's activations" in n for n in notes)
    assert not any("stand in" in n for n in notes)      # mixtral runs: its own model, no stand-in
    gemma2 = planning_notes(spec_from_hf_config(CONFIGS["gemma2-9b"], 8192))
    # 21 of 42 layers see 4096 keys, the others 8192: 6144 on average
    assert any("21 of 42 layers" in n and "6,144 keys" in n for n in gemma2)
    neox = planning_notes(spec_from_hf_config(CONFIGS["gpt-neox-20b"]))
    assert any(n.startswith("parallel attention") for n in neox)
    assert any(n.startswith("RoPE on 25%") for n in neox)
    assert planning_notes(spec_from_hf_config(CONFIGS["qwen3-8b"]), EXACT["qwen3-8b"]) == []
    off = planning_notes(spec_from_hf_config(CONFIGS["qwen3-8b"]), EXACT["qwen3-8b"] + 8_190_735)
    assert off[0].startswith("parameter formula 8,190,735,360 vs transformers' 8,198,926,095 (-0.1%)")


def write(tmp_path, name, **changes):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(dict(CONFIGS[name], **changes)))
    return str(path)


def test_run_yaml_model_hf_config_builds_the_shape(tmp_path):
    config = from_dict({"model": {"hf_config": write(tmp_path, "qwen3-0.6b"), "seq_len": 64}})
    spec = config.model_spec()
    assert (spec.arch, spec.layers, spec.hidden, spec.head_dim, spec.tied_embeddings,
            spec.seq_len) == ("qwen3", 28, 1024, 128, True, 64)
    again = from_dict(config.to_dict())               # a dumped run.yaml loads back the same
    assert again.model_spec() == spec
    assert from_dict({"model": {"hf_config": write(tmp_path, "qwen3-0.6b"), "layers": 28}})
    with pytest.raises(ConfigError, match=r"model.layers 4 \(the config has 28\) disagrees"):
        from_dict({"model": {"hf_config": write(tmp_path, "qwen3-0.6b"), "layers": 4}})
    with pytest.raises(ConfigError, match="arch gemma2 is planned only"):
        from_dict({"model": {"hf_config": write(tmp_path, "gemma2-9b")}})
    with pytest.raises(ConfigError, match="RoPE scaling 'yarn'"):
        from_dict({"model": {"hf_config": write(tmp_path, "qwen2-7b", rope_scaling={
            "rope_type": "yarn", "factor": 4.0})}})
    with pytest.raises(ConfigError, match="cannot read it"):
        from_dict({"model": {"hf_config": str(tmp_path / "none.json")}})


def test_run_yaml_new_keys_and_old_files():
    old = from_dict({"model": {"arch": "llama", "layers": 2, "hidden": 64, "heads": 4}})
    assert old.model_spec().head_dim == 16 and old.model.tied_embeddings is None
    qwen3 = from_dict({"model": {"arch": "qwen3", "layers": 2, "hidden": 64, "heads": 4,
                                 "head_dim": 32, "tied_embeddings": True}})
    assert qwen3.model_spec().q_width == 128 and qwen3.model_spec().qk_norm
    with pytest.raises(ConfigError, match="arch llama has no sliding-window"):
        from_dict({"model": {"arch": "llama", "sliding_window": 8}})
    with pytest.raises(ConfigError, match="arch mixtral is a Mixture-of-Experts family: set experts"):
        from_dict({"model": {"arch": "mixtral"}})


def test_cost_and_scale_use_the_active_parameters(capsys):
    assert main(["cost", "--params", "46.7e9", "--active-params", "12.9e9", "--tokens", "1e12",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flops"] == pytest.approx(6 * 12.9e9 * 1e12) and out["active_params"] == 12.9e9
    assert main(["cost", "--params", "46.7e9", "--active-params", "12.9e9", "--tokens", "1e12"]) == 0
    assert "C = 6 N_active D" in capsys.readouterr().out
    assert main(["scale", "--params", "46.7e9", "--active-params", "12.9e9", "--compute", "7.74e22",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == pytest.approx(7.74e22 / (6 * 12.9e9)) and out["loss"] is None
    assert main(["cost", "--params", "1e9", "--active-params", "2e9", "--tokens", "1e9"]) == 2
    assert "at most --params" in capsys.readouterr().err
    assert main(["scale", "--params", "46.7e9", "--active-params", "12.9e9"]) == 2
    assert "exactly one of --tokens or --compute" in capsys.readouterr().err


@pytest.mark.parametrize("preset_name, config", [("mistral-7b", "mistral-7b-v0.1"),
                                                 ("qwen3-8b", "qwen3-8b"),
                                                 ("mixtral-8x7b", "mixtral-8x7b")])
def test_family_presets_count_as_transformers(preset_name, config):
    from llmlaunch.topology.shapes import preset

    assert total_params(preset(preset_name)) == EXACT[config]
    assert total_params(preset("qwen2.5-7b")) == EXACT["qwen2-7b"]      # the same shape


def test_a_deepseek_v3_config_plans_from_its_shapes_without_torch_or_transformers(tmp_path):
    """Issue 23: the published DeepSeek-V3 config.json plans for 1024 GPUs with transformers'
    exact count (671,026,404,352) read off its shapes in pure Python (topology/hf_defaults.py;
    tests/torch/test_hf_shape_counts.py pins that count to transformers' on small configs of every
    family), so neither torch nor transformers is imported (their import alone took 7 s)."""
    import subprocess
    import sys

    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["deepseek-v3"]))
    code = ("import json, sys, io, contextlib; from llmlaunch.cli import main; out = io.StringIO()\n"
            f"with contextlib.redirect_stdout(out): rc = main(['plan', '--hf-config', {str(tmp_path)!r},"
            " '--gpus', '1024', '--gpu', 'h100-80gb', '--engine', 'megatron-core', '--precision', "
            "'fp8', '--json'])\n"
            "model = json.loads(out.getvalue())['model']\n"
            "print(json.dumps([rc, model['params'], model['params_source'], "
            "[m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rc, params, source, imported = json.loads(proc.stdout)
    assert (rc, params, imported) == (0, EXACT["deepseek-v3"], [])
    assert source == "exact, from the config's shapes"
