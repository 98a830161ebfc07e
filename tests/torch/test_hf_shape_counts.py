"""`plan --hf-config` counts a config of every family with a shape reader from its shapes, in pure
Python (topology/hf_defaults.py, hf_config.spec_from_shapes): here that count is pinned equal to
transformers' own (the model built on the meta device, model/hf_count.py) on a small config of
every such family, on the same configs with keys left out (transformers' defaults), under the other
names a config may use, and with what changes the count flipped; what the formula does not count
sends the config to transformers, and the defaults table is transformers' own."""
from __future__ import annotations

import inspect
import json

import pytest

from family_configs import SMALL  # tests/helpers
from llmlaunch.cli import main
from llmlaunch.model.hf_count import count_hf_params, hf_config_object, normalised_hf_config
from llmlaunch.topology.hf_config import (KNOWN_TYPES, shape_count_gap, spec_from_hf_config,
                                          spec_from_shapes)
from llmlaunch.topology.hf_defaults import TRANSFORMERS_DEFAULTS, UNMODELLED
from llmlaunch.topology.params import total_params

pytestmark = pytest.mark.filterwarnings("ignore")
_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "vocab_size", "n_layer", "n_embd", "n_head", "moe_intermediate_size", "kv_lora_rank",
          "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "head_dim",
          "n_routed_experts", "num_local_experts", "num_experts", "max_position_embeddings",
          "n_positions", "num_experts_per_tok", "first_k_dense_replace", "sliding_window",
          "num_key_value_heads", "pad_token_id", "eos_token_id")


def pure_count(cfg: dict) -> int:
    return total_params(spec_from_shapes(cfg))


def variants(cfg: dict) -> dict[str, dict]:
    """The config, the same with every key but its sizes left out (transformers fills them in),
    and with each modelled flag flipped."""
    out = {"as written": cfg,
           "sizes only": {k: v for k, v in cfg.items() if k in _SIZES or k == "model_type"}}
    if "tie_word_embeddings" not in UNMODELLED.get(cfg["model_type"], {}):
        tied = cfg.get("tie_word_embeddings", TRANSFORMERS_DEFAULTS[cfg["model_type"]]
                       .get("tie_word_embeddings"))
        out["tied flipped"] = dict(cfg, tie_word_embeddings=not tied)
    return out


def test_every_family_with_a_reader_has_a_small_config_and_defaults():
    assert set(SMALL) == set(KNOWN_TYPES) == set(TRANSFORMERS_DEFAULTS)


@pytest.mark.parametrize("name", SMALL)
def test_the_shape_count_equals_transformers(name):
    for label, cfg in variants(SMALL[name]).items():
        assert shape_count_gap(cfg) is None, (name, label)
        assert pure_count(cfg) == count_hf_params(cfg), (name, label)
        # the planned shape is the one transformers' completed config gives, field by field
        assert spec_from_shapes(cfg) == spec_from_hf_config(normalised_hf_config(cfg)), (name, label)


@pytest.mark.parametrize("name", [n for n in SMALL if UNMODELLED.get(n)])
def test_what_the_formula_does_not_count_goes_to_transformers(name):
    """Each key of UNMODELLED, set the other way, changes transformers' count, and the config is
    no longer counted from its shapes (shape_count_gap names the key)."""
    cfg = SMALL[name]
    for key, value in UNMODELLED[name].items():
        flipped = dict(cfg, **{key: not value})
        assert count_hf_params(flipped) != count_hf_params(cfg), (name, key)
        assert key in shape_count_gap(flipped), (name, key)


def test_other_names_for_a_key():
    """GPT-2 under llama's key names (its attribute_map), GPT-NeoX's older rotary keys, and
    DeepSeek-V3's and Mixtral's other names for the expert count read as transformers reads them."""
    gpt2 = {"model_type": "gpt2", "num_hidden_layers": 2, "hidden_size": 64,
            "num_attention_heads": 4, "max_position_embeddings": 128, "vocab_size": 1000}
    neox = dict(SMALL["gpt_neox"], rotary_pct=0.5, rotary_emb_base=5000)
    deepseek = {k: v for k, v in SMALL["deepseek_v3"].items() if k != "n_routed_experts"}
    mixtral = {k: v for k, v in SMALL["mixtral"].items() if k != "num_local_experts"}
    for cfg in (gpt2, neox, dict(deepseek, num_local_experts=8), dict(mixtral, num_experts=2)):
        assert pure_count(cfg) == count_hf_params(cfg), cfg["model_type"]
        assert spec_from_shapes(cfg) == spec_from_hf_config(normalised_hf_config(cfg))


@pytest.mark.parametrize("model_type", sorted(TRANSFORMERS_DEFAULTS))
def test_the_defaults_are_transformers_own(model_type):
    """Every default in the table is the one of the installed transformers' config class
    (its __init__ signature; RoPE's theta and rotary fraction from its default rope_parameters)."""
    config = hf_config_object({"model_type": model_type})
    signature = inspect.signature(type(config).__init__).parameters
    rope = config.to_dict().get("rope_parameters") or {}
    for key, value in TRANSFORMERS_DEFAULTS[model_type].items():
        theirs = rope[key] if key in ("rope_theta", "partial_rotary_factor") else signature[key].default
        assert theirs == value, (model_type, key, theirs, value)


def test_a_config_the_formula_does_not_count_plans_with_transformers_count(tmp_path, capsys):
    """Llama with attention biases: transformers counts it, and the model line says why."""
    cfg = dict(SMALL["llama"], attention_bias=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["plan", "--hf-config", str(tmp_path), "--gpus", "8", "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["params"] == count_hf_params(cfg) == 214_720
    assert model["params_source"] == ("exact, from transformers' model on the meta device: "
                                      "attention_bias true is not in the shape formula")
    assert model["approximations"][0].startswith("parameter formula 214,336 vs transformers' 214,720")
