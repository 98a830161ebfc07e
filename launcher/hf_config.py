"""A local Hugging Face config.json as a ModelSpec, with its exact parameter count.

The count comes from building the model on the meta device (accelerate's init_empty_weights): no
memory, no weights, no hub access. transformers and accelerate are imported only here.
"""
from __future__ import annotations

import json
from pathlib import Path

from .topology.model_spec import ModelSpec

# HF model types that map onto our two architectures.
_LLAMA_TYPES = ("llama", "mistral")
_GPT2_TYPES = ("gpt2",)
MAX_DEFAULT_SEQ_LEN = 8192


def read_hf_config(path: str) -> dict:
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    try:
        return json.loads(file.read_text())
    except OSError as exc:
        raise ValueError(f"--hf-config {path!r}: cannot read it ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--hf-config {path!r}: not valid JSON (line {exc.lineno})") from None


def spec_from_hf(cfg: dict, seq_len: int | None = None, source: str = "") -> ModelSpec:
    """Map a config.json dict onto a ModelSpec (gpt2 and llama-family model types)."""
    model_type = cfg.get("model_type", "")
    try:
        if model_type in _GPT2_TYPES:
            return ModelSpec(arch="gpt2", layers=cfg["n_layer"], hidden=cfg["n_embd"],
                             heads=cfg["n_head"], ffn_hidden=cfg.get("n_inner") or 0,
                             vocab=cfg["vocab_size"], seq_len=seq_len or cfg.get("n_positions", 1024),
                             norm_eps=cfg.get("layer_norm_epsilon", 1e-5), name=source)
        if model_type in _LLAMA_TYPES:
            max_pos = cfg.get("max_position_embeddings", 4096)
            return ModelSpec(arch="llama", layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
                             heads=cfg["num_attention_heads"],
                             kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                             ffn_hidden=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                             seq_len=seq_len or min(max_pos, MAX_DEFAULT_SEQ_LEN),
                             rope_theta=cfg.get("rope_theta", 10000.0),
                             norm_eps=cfg.get("rms_norm_eps", 1e-5), name=source)
    except KeyError as exc:
        raise ValueError(f"--hf-config {source!r}: missing key {exc.args[0]!r} for model_type "
                         f"{model_type!r}") from None
    raise ValueError(f"--hf-config {source!r}: model_type {model_type!r} is not supported; "
                     f"supported: {', '.join(_GPT2_TYPES + _LLAMA_TYPES)}")


def count_hf_params(cfg: dict) -> int:
    """Exact parameter count of the HF model (tied weights counted once), built on the meta device."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in cfg.items() if k != "model_type"}
    config = AutoConfig.for_model(cfg["model_type"], **fields)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    # transformers 5 does not tie input and output embeddings under init_empty_weights: tie them
    # as loading a checkpoint would, so a tied table is counted once
    model.tie_weights()
    seen, total = set(), 0
    for param in model.parameters():  # parameters() yields a tied tensor once
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total
