"""A Hugging Face config.json as a ModelSpec: the one reader of HF shapes (plan --hf-config, a run's
checkpoint.init_hf, HF import and export all use it). Pure Python on the JSON's keys; the exact
parameter count from the model built on the meta device is model/hf_mapping.py's count_hf_params.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .model_spec import ModelSpec

# HF model types that map onto our two architectures.
LLAMA_TYPES = ("llama", "mistral")
GPT2_TYPES = ("gpt2",)
SUPPORTED_TYPES = GPT2_TYPES + LLAMA_TYPES
# A config whose max_position_embeddings is longer than this plans and trains at this length unless
# a sequence length is given (Llama 3.1's 131072 would make every activation estimate enormous).
MAX_DEFAULT_SEQ_LEN = 8192


def read_hf_config(path: str | Path, label: str = "HF config") -> dict:
    """config.json (or a directory holding one) as a dict; ValueError naming the file (and the
    input it came from, `label`: e.g. --hf-config) otherwise."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        cfg = json.loads(file.read_text())
    except OSError as exc:
        raise ValueError(f"{label} {str(path)!r}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label} {str(path)!r}: not valid JSON (line {exc.lineno})") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ValueError(f"{label} {str(path)!r}: not a transformers config (no model_type)")
    return cfg


def _rope(cfg: Mapping) -> dict:
    """rope_parameters (transformers 5) or the older rope_theta / rope_scaling keys."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def spec_from_hf_config(cfg: Mapping, seq_len: int | None = None, source: str = "",
                        label: str = "HF config") -> ModelSpec:
    """The shape of a gpt2, llama or mistral config.json (a dict, or a PretrainedConfig's to_dict());
    errors name `label` and `source` (e.g. --hf-config and its path)."""
    model_type = cfg.get("model_type", "")
    where = f"{label} {source!r}" if source else label
    try:
        if model_type in GPT2_TYPES:
            return ModelSpec(arch="gpt2", layers=cfg["n_layer"], hidden=cfg["n_embd"],
                             heads=cfg["n_head"], ffn_hidden=cfg.get("n_inner") or 0,
                             vocab=cfg["vocab_size"], seq_len=seq_len or cfg.get("n_positions", 1024),
                             norm_eps=cfg.get("layer_norm_epsilon", 1e-5), name=source)
        if model_type in LLAMA_TYPES:
            max_pos = cfg.get("max_position_embeddings", 4096)
            return ModelSpec(arch="llama", layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
                             heads=cfg["num_attention_heads"],
                             kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                             ffn_hidden=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                             seq_len=seq_len or min(max_pos, MAX_DEFAULT_SEQ_LEN),
                             rope_theta=float(_rope(cfg)["rope_theta"]),
                             norm_eps=cfg.get("rms_norm_eps", 1e-5), name=source)
    except KeyError as exc:
        raise ValueError(f"{where}: missing key {exc.args[0]!r} for model_type {model_type!r}") from None
    raise ValueError(f"{where}: model_type {model_type!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_TYPES)}")


def training_differences(cfg: Mapping, spec: ModelSpec) -> list[str]:
    """What in the config llmlaunch's model would compute differently (empty: it runs the model
    exactly). The planner plans such configs anyway: their shape, and so their memory and FLOPs,
    are the spec's."""
    out = []
    if spec.arch != "llama":
        return out
    rope = _rope(cfg)
    if rope["rope_type"] != "default":
        out.append(f"RoPE scaling {rope['rope_type']!r}")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim != spec.head_dim:
        out.append(f"head_dim {head_dim} other than hidden/heads = {spec.head_dim}")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        out.append("attention or MLP biases")
    window = cfg.get("sliding_window")
    if window and cfg.get("use_sliding_window", True) and window < spec.seq_len:
        out.append(f"sliding-window attention ({window} tokens) shorter than seq_len {spec.seq_len}")
    if cfg.get("hidden_act", "silu") != "silu":
        out.append(f"activation {cfg.get('hidden_act')!r} (the model runs SwiGLU)")
    return out
