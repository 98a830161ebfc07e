"""A Hugging Face config.json as a ModelSpec: the one reader of HF shapes (plan --hf-config, run.yaml's
model.hf_config, HF import and export all use it). Pure Python on the JSON's keys; the per-family
key readers are hf_families.py, what transformers fills in before it builds a model hf_defaults.py.
A config of a family with a reader is counted from its shapes (params.py's formula, pinned equal to
transformers' count by tests/torch/test_hf_shape_counts.py); any other, or one that sets what the
formula does not count, by the model transformers builds on the meta device (model/hf_count.py).

Two questions, two functions (what the planner approximates for a shape, and by how much, is
topology/approximations.py's planning_notes):
- spec_from_hf_config: the planner's shape of any decoder-only config (every family reads;
  model_types without a reader of their own are read with llama's keys and the common aliases);
- training_differences: what in the config llmlaunch's model would compute differently (empty: the
  model runs it exactly; only meaningful for the runnable families);
- spec_from_shapes, shape_count_gap: the shape of a config as transformers completes it, and why
  (if at all) the formula cannot count it exactly (plan --hf-config, cost --hf-config).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .hf_checks import check_hf_config
from .hf_defaults import unmodelled_keys, with_transformers_defaults
from .hf_families import MAX_DEFAULT_SEQ_LEN, READERS, dense_layer_indices, reader, rope
from .model_spec import MLPS, ModelSpec
from .params import total_params

__all__ = ["MAX_DEFAULT_SEQ_LEN", "read_hf_config", "spec_from_hf_config", "fit_to_count",
           "training_differences", "KNOWN_TYPES", "spec_from_shapes", "shape_count_gap"]
KNOWN_TYPES = tuple(READERS)
"""model_types with a reader of their own (every other decoder-only type is read generically)."""


def read_hf_config(path: str | Path, label: str = "HF config") -> dict:
    """config.json (or a directory holding one) as a dict, checked before anything is built from it
    (hf_checks.check_hf_config: types, sizes, NaN, nesting); ValueError in one line naming the file
    (and the input it came from, `label`: e.g. --hf-config) and the key otherwise."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    where = f"{label} {str(path)!r}"
    try:
        raw = file.read_bytes()
        text = raw.decode("utf-8")
        cfg = json.loads(text)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); a "
                         "config.json is UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON (line {exc.lineno})") from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to read; a transformers config nests "
                         "a few levels") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ValueError(f"{where}: not a transformers config (no model_type)")
    if not isinstance(cfg["model_type"], str):
        raise ValueError(f"{where}: key 'model_type' must be a string, got {cfg['model_type']!r}")
    check_hf_config(cfg, where)
    return cfg


def spec_from_hf_config(cfg: Mapping, seq_len: int | None = None, source: str = "",
                        label: str = "HF config") -> ModelSpec:
    """The shape of a decoder-only config.json (a dict, or a PretrainedConfig's to_dict()); errors
    name `label` and `source` (e.g. --hf-config and its path)."""
    model_type = cfg.get("model_type", "")
    where = f"{label} {source!r}" if source else label
    if cfg.get("is_encoder_decoder"):
        raise ValueError(f"{where}: model_type {model_type!r} is an encoder-decoder model; llmlaunch "
                         "plans decoder-only language models")
    try:
        fields = reader(model_type)(cfg, seq_len)
        return ModelSpec(name=source, **fields)
    except KeyError as exc:
        raise ValueError(f"{where}: missing key {exc.args[0]!r} for model_type {model_type!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: model_type {model_type!r}: {exc}") from None


def spec_from_shapes(cfg: Mapping, seq_len: int | None = None, source: str = "",
                     label: str = "HF config") -> ModelSpec:
    """The shape of a config.json as transformers completes it (its defaults for what the file
    leaves out: hf_defaults.with_transformers_defaults), without importing transformers; its
    total_params is transformers' exact count unless shape_count_gap says otherwise."""
    return spec_from_hf_config(with_transformers_defaults(cfg), seq_len, source, label)


def shape_count_gap(cfg: Mapping) -> str | None:
    """Why the shape formula cannot count this config exactly (None: it counts exactly what
    transformers builds): its model_type has no reader of its own, or it sets a key that adds
    parameters no ModelSpec field describes."""
    model_type = cfg.get("model_type", "")
    if model_type not in READERS:
        return f"model_type {model_type!r} has no shape reader (topology/hf_families.py)"
    keys = unmodelled_keys(with_transformers_defaults(cfg))
    return f"{', '.join(keys)} is not in the shape formula" if keys else None


def fit_to_count(spec: ModelSpec, exact: int) -> ModelSpec:
    """A generically read config (arch decoder) does not say whether its MLP is gated: take the MLP
    kind whose parameter formula comes closest to transformers' exact count."""
    if spec.arch != "decoder":
        return spec
    candidates = [spec.replace(mlp=mlp) for mlp in MLPS if mlp != "geglu"]
    return min(candidates, key=lambda s: abs(total_params(s) - exact))


def training_differences(cfg: Mapping, spec: ModelSpec) -> list[str]:
    """What in the config llmlaunch's model would compute differently (empty: it runs the model
    exactly). The planner plans such configs anyway: their shape, and so their memory and FLOPs,
    are the spec's. Features the spec itself holds are untrainable_reasons' business."""
    out = []
    if not spec.runnable:
        return out
    if spec.arch == "gpt2":
        act = cfg.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            out.append(f"activation {act!r} (the model runs the tanh GELU, gelu_new)")
        for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if cfg.get(key):
                out.append(key)
        if cfg.get("scale_attn_weights") is False:
            out.append("unscaled attention (scale_attn_weights false)")
        return out
    kind = rope(cfg)["rope_type"]
    if kind != "default":
        out.append(f"RoPE scaling {kind!r}")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        out.append("attention output or MLP biases")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        out.append(f"activation {act!r} (the model runs SwiGLU)")
    if spec.moe:
        out += moe_differences(cfg, spec)
    return out


def moe_differences(cfg: Mapping, spec: ModelSpec) -> list[str]:
    """What of an MoE config the model computes otherwise: dense layers other than the first ones
    (Qwen-MoE's mlp_only_layers, decoder_sparse_step), router jitter noise (Mixtral)."""
    out = []
    if spec.arch in ("qwen2_moe", "qwen3_moe"):
        dense = dense_layer_indices(cfg, spec.layers)
        if dense != list(range(len(dense))):
            out.append(f"dense MLPs in layers {dense} (the model keeps them in the first "
                       "dense_layers layers only)")
    if cfg.get("router_jitter_noise"):
        out.append(f"router jitter noise {cfg['router_jitter_noise']}")
    return out
