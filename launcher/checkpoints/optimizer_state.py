"""Which optimizer state a checkpoint holds per parameter, and how each piece is cut over TP ranks
(canonical.py reads and writes them). docs/optimizers.md.

- AdamW (torch's, DeepSpeed's): exp_avg, exp_avg_sq, shaped and split like the parameter.
- Lion (launcher/optimizers.py): exp_avg, like the parameter.
- Adafactor: a matrix's exp_avg_sq_row [R] and exp_avg_sq_col [C], a vector's exp_avg_sq. The
  factors hold the full matrix's statistics (optimizers.py reduces them over the TP group), so the
  factor along the split axis is cut like that axis (the rows of a column-parallel or vocabulary
  slice, the columns of a row-parallel one, with the same segments and padding) and the other one
  is the same on every TP rank: resharding is exact, without re-deriving anything from gradients.
"""
from __future__ import annotations

import dataclasses

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def optimizer_state_keys(optimizer, param) -> tuple[str, ...]:
    """The state tensors `optimizer` (a basic, unwrapped one) keeps for `param`."""
    from llmlaunch.launcher.optimizers import Adafactor, Lion

    if isinstance(optimizer, Lion):
        return ("exp_avg",)
    if isinstance(optimizer, Adafactor):
        return ("exp_avg_sq_row", "exp_avg_sq_col") if param.dim() >= 2 else ("exp_avg_sq",)
    return ADAM_KEYS


def new_optimizer_state(optimizer, param) -> dict:
    """The state `optimizer` creates for `param` before its first step (zero moments, step 0), as
    torch's AdamW or our optimizers would."""
    import torch

    new_state = getattr(optimizer, "new_state", None)
    if new_state is not None:
        return new_state(param)
    return {"step": torch.zeros((), dtype=torch.float32),
            **{key: torch.zeros_like(param, memory_format=torch.preserve_format)
               for key in ADAM_KEYS}}


def state_split(split, key: str, param_dim: int):
    """How state `key` of a parameter split by `split` (model/sharding.TPSplit or None) is cut over
    TP ranks: the parameter's split, an Adafactor factor's (a 1-D TPSplit), or None (replicated)."""
    if split is None or key in ("param", "exp_avg", "exp_avg_sq"):
        return split
    along = {"exp_avg_sq_row": param_dim - 2, "exp_avg_sq_col": param_dim - 1}[key]
    if split.dim != along:
        return None
    return dataclasses.replace(split, dim=0)
