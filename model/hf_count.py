"""transformers' own reading of a config.json: the exact parameter count of the model it builds (on
the meta device: no memory, no weights, no hub access) and the config with transformers' defaults
filled in, which topology/hf_config.py then reads (`plan --hf-config`, `cost --hf-config`).
"""
from __future__ import annotations


def hf_config_object(cfg: dict, label: str = "HF config"):
    """The PretrainedConfig transformers builds from a config.json dict; ValueError in one line
    when transformers does not know the model_type or rejects the values."""
    from transformers import AutoConfig

    model_type = cfg.get("model_type")
    fields = {k: v for k, v in cfg.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError, TypeError) as exc:
        import transformers

        raise ValueError(f"{label}: transformers {transformers.__version__} cannot read model_type "
                         f"{model_type!r}: {_first_sentence(exc)}") from None


def normalised_hf_config(cfg: dict, label: str = "HF config") -> dict:
    """The config as transformers holds it (to_dict(): every default filled in, rope parameters
    and layer types in transformers 5's form), the model_type kept."""
    return dict(hf_config_object(cfg, label).to_dict(), model_type=cfg.get("model_type"))


def count_hf_params(cfg: dict, label: str = "HF config") -> int:
    """Exact parameter count of the HF causal LM of a config.json dict (tied weights counted once),
    built on the meta device from the start: every tensor constructor defaults to meta inside
    `torch.device("meta")`, so nothing is allocated, not even the tensors a module creates with
    torch.empty before init_empty_weights can move them (transformers 5's fused MoE experts,
    DeepseekV3Experts: 30 GB for DeepSeek-V3 otherwise). ValueError in one line when transformers
    cannot build it."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = hf_config_object(cfg, label)
    try:
        with torch.device("meta"), init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{label}: transformers cannot build a causal language model of "
                         f"model_type {cfg.get('model_type')!r}: {_first_sentence(exc)}") from None
    # transformers 5 does not tie input and output embeddings under init_empty_weights: tie them
    # as loading a checkpoint would, so a tied table is counted once
    model.tie_weights()
    seen, total = set(), 0
    for param in model.parameters():  # parameters() yields a tied tensor once
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def _first_sentence(exc: Exception) -> str:
    """An exception's message cut to its first line and sentence (transformers lists every model
    type it knows in some of them), at most 200 characters."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0].split(". ")[0][:200]
