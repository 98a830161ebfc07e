"""A config.json is checked before anything is built from it (topology/hf_checks.py): one line
naming the input, the file and the key, from `plan --hf-config` and from run.yaml's
model.hf_config alike (the same check), never a traceback or a model allocated at an absurd size."""
import json

import pytest

from llmlaunch.cli import main
from llmlaunch.topology.hf_checks import MAX_DEPTH, check_hf_config, size_problem

LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
         "max_position_embeddings": 256, "rope_theta": 10000.0}


def nested(depth):
    value = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("change, needle", [
    ({"hidden_size": 1e12}, "key 'hidden_size' must be an integer, got 1000000000000.0"),
    ({"hidden_size": "4096"}, "key 'hidden_size' must be an integer, got '4096'"),
    ({"num_hidden_layers": True}, "key 'num_hidden_layers' must be an integer, got True"),
    ({"num_hidden_layers": 10**9}, "key 'num_hidden_layers' must be positive and at most 10,000"),
    ({"vocab_size": 0}, "key 'vocab_size' must be positive"),
    ({"q_lora_rank": -1}, "key 'q_lora_rank' must be at least 0"),
    ({"rope_theta": float("nan")}, "key 'rope_theta' is NaN or infinite"),
    ({"rope_scaling": {"factor": float("inf")}}, "key 'rope_scaling.factor' is NaN or infinite"),
    ({"rms_norm_eps": -1e-6}, "key 'rms_norm_eps' must be a positive finite number"),
    ({"text_config": {"hidden_size": 2.5}}, "key 'text_config.hidden_size' must be an integer"),
    ({"x": nested(MAX_DEPTH + 1)}, f"JSON nested deeper than {MAX_DEPTH} levels (at x.a.a"),
])
def test_check_hf_config_names_the_key(change, needle):
    with pytest.raises(ValueError) as info:
        check_hf_config({**LLAMA, **change}, "--hf-config 'c.json'")
    message = str(info.value)
    assert message.startswith("--hf-config 'c.json': ") and needle in message
    assert "\n" not in message


def test_published_shapes_pass():
    from family_configs import CONFIGS  # tests/helpers

    for name, cfg in CONFIGS.items():
        check_hf_config(cfg, name)
    assert size_problem("sliding_window", None) is None     # null: the family's reader decides
    assert size_problem("first_k_dense_replace", 0) is None
    assert size_problem("some_other_key", 1e30) is None


def write(tmp_path, text: bytes):
    (tmp_path / "config.json").write_bytes(text)
    return str(tmp_path)


@pytest.mark.parametrize("text, needle", [
    (json.dumps({**LLAMA, "hidden_size": 1e12}).encode(), "key 'hidden_size' must be an integer"),
    (json.dumps(LLAMA).replace("10000.0", "NaN").encode(), "key 'rope_theta' is NaN or infinite"),
    (b'{"model_type": "llama", "name": "\xff"}', "not UTF-8 text (byte 33 is 0xff)"),
    (b'{"model_type": 5}', "key 'model_type' must be a string, got 5"),
    (b"[" * 100000 + b"]" * 100000, "JSON nested too deeply to read"),
    (b'{"model_type": "llama",', "not valid JSON (line 1)"),
])
def test_plan_refuses_a_bad_config_in_one_line(text, needle, tmp_path, capsys):
    assert main(["plan", "--hf-config", write(tmp_path, text), "--gpus", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--hf-config {str(tmp_path)!r}: " in err and needle in err
    assert len(err.splitlines()) == 1


def test_run_yaml_model_hf_config_takes_the_same_check(tmp_path, capsys):
    path = write(tmp_path, json.dumps({**LLAMA, "num_attention_heads": 4.0}).encode())
    code = main(["train", "--config", "tiny-cpu", "--run-dir", str(tmp_path / "run"),
                 "--set", f"model.hf_config={path}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert f"model.hf_config {path!r}: key 'num_attention_heads' must be an integer" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "logs").exists()
