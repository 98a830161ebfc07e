"""Hugging Face import: a local HF directory's safetensors as canonical tensors, which
`build_pipeline_model(hf_dir=)` slices for each rank (each rank reads only the tensors it needs: an
expert-parallel rank only its experts').
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from llmlaunch.topology.model_spec import ModelSpec

from .hf_mapping import (CONCAT, STACKED, TRANSPOSE, check_compatible, hf_disk_names, hf_mapping,
                         spec_from_hf_config)
from .sharding import expert_of


class HFWeights:
    """Lazy reader of a local HF directory's safetensors, yielding canonical tensors by name."""

    def __init__(self, hf_dir, spec: ModelSpec):
        from transformers import AutoConfig

        self.dir = Path(hf_dir)
        self.spec = spec
        self.config = AutoConfig.from_pretrained(str(self.dir), local_files_only=True)
        check_compatible(spec, spec_from_hf_config(self.config))
        self.mapping = hf_mapping(spec)
        self._files = self._weight_files()
        self._handles = {}

    def _weight_files(self) -> dict[str, Path]:
        """HF tensor name -> the safetensors file holding it."""
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: self.dir / file for name, file in weight_map.items()}
        single = self.dir / "model.safetensors"
        if not single.is_file():
            raise FileNotFoundError(f"{self.dir} has no model.safetensors(.index.json)")
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}

    def _hf_tensor(self, name: str) -> torch.Tensor:
        if name not in self._files and name == "lm_head.weight" and self.config.tie_word_embeddings:
            name = "model.embed_tokens.weight"      # a llama that ties its head (e.g. Llama 3.2 1B)
        self._hf_tensor_handle(name)
        return self._handles[self._files[name]].get_tensor(name).float()

    def _hf_row(self, name: str, row: int) -> torch.Tensor:
        """Row `row` of a stacked tensor, read alone (safetensors' slices)."""
        self._hf_tensor_handle(name)
        return self._handles[self._files[name]].get_slice(name)[row].float()

    def _hf_tensor_handle(self, name: str) -> None:
        if name not in self._files:
            raise KeyError(f"{self.dir} has no tensor {name}")
        from safetensors import safe_open

        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="pt")

    def canonical_tensor(self, name: str) -> torch.Tensor:
        """The full canonical tensor `name`, fp32. An MoE model's experts (and Mixtral's router)
        are read from the tensors save_pretrained writes, one per expert (hf_disk_names); a file
        holding transformers' in-memory stacks instead is read too (row e of the stack)."""
        hf_names, kind = self.mapping[name]
        if self.spec.moe and name.startswith("blocks."):
            disk = hf_disk_names(self.spec, name)
            if disk and all(n in self._files for n in disk):
                return torch.cat([self._hf_tensor(n) for n in disk], dim=0)
            if kind == STACKED:
                return self._hf_row(hf_names[0], expert_of(name))
        tensors = [self._hf_tensor(n) for n in hf_names]
        if kind == TRANSPOSE:
            return tensors[0].t().contiguous()
        if kind == CONCAT:
            return torch.cat(tensors, dim=0)
        return tensors[0]
