"""Where model shapes come from: the published presets (data/models.yaml) and a shape derived from a
parameter count. A ModelSpec (model_spec.py) is the shape itself; counting its parameters
(params.py) is what derivation needs, so it lives here, above both.
"""
from __future__ import annotations

import dataclasses
import functools
import math


from .data_files import load_data_yaml
from .model_spec import ModelSpec
from .params import total_params

# models.yaml keys that are ModelSpec fields (the others: params, source, family)
SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(ModelSpec) if f.name != "name")
# --params snaps to a published shape when within this relative distance of its count.
SNAP_TOLERANCE = 0.05
# A derived shape must land this close to the requested count (integer layers and a width in steps
# of 512 or 1024 make it approximate; far below the smallest family member it cannot).
DERIVE_TOLERANCE = 0.25


@functools.lru_cache(maxsize=1)
def _published() -> dict:
    return load_data_yaml("models.yaml")


def preset_names() -> list[str]:
    return sorted(_published())


def preset(name: str) -> ModelSpec:
    """The published shape called `name` (see topology/data/models.yaml)."""
    table = _published()
    key = name.lower()
    if key not in table:
        raise ValueError(f"--model {name!r} is not a preset; known: {', '.join(sorted(table))}")
    return _spec_from_entry(key, table[key])


def _spec_from_entry(name: str, entry: dict) -> ModelSpec:
    fields = {k: entry[k] for k in SPEC_FIELDS if k in entry}
    return ModelSpec(name=name, **fields)


def spec_from_params(params: float, arch: str = "gpt2", seq_len: int | None = None,
                     vocab: int | None = None) -> ModelSpec:
    """A shape with about `params` parameters.

    Within SNAP_TOLERANCE of a published GPT-style member (GPT-3 Table 2.1, Megatron-LM's Table 1
    sweep, MT-NLG) that member's shape is used; for another `arch` (llama, mistral, ...), within
    SNAP_TOLERANCE of a published model of that arch, that model's shape (plan --params 7e9 --arch
    llama: Llama 2 7B), else the derivation below with the nearest such model's vocabulary and
    sequence length. Otherwise depth follows the family: log L is
    interpolated in log N between the bracketing members, width h (a multiple of 128, head dim 128)
    solves N = L * (12h^2 + 13h) + V*h, and L is re-solved for that h.
    """
    if not params or params <= 0 or not math.isfinite(params):
        raise ValueError(f"--params must be a positive number such as 7e9, got {params!r}")
    members = sorted((total_params(_spec_from_entry(n, e)), n, e)
                     for n, e in _published().items() if e.get("family"))
    closest = min(members, key=lambda m: abs(m[0] - params) / params)
    if abs(closest[0] - params) / params <= SNAP_TOLERANCE and arch == "gpt2":
        spec = _spec_from_entry(closest[1], closest[2])
        return spec.replace(seq_len=seq_len or spec.seq_len, vocab=vocab or spec.vocab)

    if arch != "gpt2":   # another family: its nearest published member, or its vocab and s
        kin = sorted((total_params(_spec_from_entry(n, e)), n, e)
                     for n, e in _published().items() if e.get("arch") == arch)
        if kin:
            near = min(kin, key=lambda m: abs(m[0] - params) / params)
            spec = _spec_from_entry(near[1], near[2])
            if abs(near[0] - params) / params <= SNAP_TOLERANCE:
                return spec.replace(seq_len=seq_len or spec.seq_len, vocab=vocab or spec.vocab)
            vocab, seq_len = vocab or spec.vocab, seq_len or spec.seq_len
    vocab = vocab or 50257
    seq_len = seq_len or 2048
    counts = [m[0] for m in members]
    depths = [m[2]["layers"] for m in members]
    if params <= counts[0]:
        log_layers = math.log(depths[0])
    elif params >= counts[-1]:
        # beyond the largest member: keep its depth-to-width trend (depth grows as N^(1/3))
        log_layers = math.log(depths[-1]) + math.log(params / counts[-1]) / 3
    else:
        i = next(i for i in range(1, len(counts)) if counts[i] >= params)
        w = math.log(params / counts[i - 1]) / math.log(counts[i] / counts[i - 1])
        log_layers = (1 - w) * math.log(depths[i - 1]) + w * math.log(depths[i])
    layers_guess = max(2, round(math.exp(log_layers)))
    # head dim 128 (64 below 1B) and a head count divisible by 8 (4 below 1B), so TP up to a node
    head_dim = 128 if params >= 1e9 else 64
    width_unit = head_dim * (8 if params >= 1e9 else 4)
    per_layer = params / layers_guess
    hidden = max(width_unit, width_unit * round(math.sqrt(per_layer / 12) / width_unit))
    spec = ModelSpec(arch=arch, layers=layers_guess, hidden=hidden, heads=hidden // head_dim,
                     vocab=vocab, seq_len=seq_len)
    # re-solve L for the rounded width so the count lands as close as the integer L allows
    embed = total_params(spec.replace(layers=1)) - (total_params(spec.replace(layers=2))
                                                    - total_params(spec.replace(layers=1)))
    layer = total_params(spec.replace(layers=2)) - total_params(spec.replace(layers=1))
    layers = max(1, round((params - embed) / layer))
    spec = spec.replace(layers=layers, name=f"derived from --params {params:.3g} ({arch})")
    derived = total_params(spec)
    if abs(derived - params) / params > DERIVE_TOLERANCE:
        raise ValueError(f"--params {params:.3g}: the nearest shape has {derived:.3g} parameters "
                         f"(L={spec.layers}, h={spec.hidden}); give the shape with --layers, --hidden "
                         "and --heads")
    return spec
