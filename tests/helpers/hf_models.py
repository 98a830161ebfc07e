"""Hugging Face models for tests: random stand-ins for published checkpoints, their state and
logits (transformers; imported by torch- and ranks-tier tests, never by the ranks themselves)."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from llmlaunch.model import hf_config
from llmlaunch.topology.model_spec import ModelSpec


def make_random_hf_model(spec: ModelSpec, out_dir: Path, seed: int = 7) -> Path:
    """A randomly initialised HF model of `spec` (standing in for a published checkpoint), with
    biases and norm weights drawn too so that mixing them up would show."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(spec))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:
                param.normal_(0.5, 0.1)
    model.save_pretrained(str(out_dir))
    return out_dir


def hf_state(directory: Path) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(str(directory)).state_dict())


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        return model(tokens).logits
