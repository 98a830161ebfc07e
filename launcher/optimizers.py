"""Lion and Adafactor as torch optimizers handed to deepspeed.initialize (train.optimizer; AdamW is
DeepSpeed's own, ds_config.py). docs/optimizers.md.

Lion (Chen et al. 2023, Algorithm 2): c = beta1 m + (1 - beta1) g; p <- p (1 - lr wd) - lr sign(c);
m <- beta2 m + (1 - beta2) g. One moment, `exp_avg`. Elementwise, so it runs on any partition
(ZeRO 0-3, the bf16 optimizer) unchanged. Ours rather than DeepSpeed's FusedLion/DeepSpeedCPULion:
those need a CUDA or C++ build, and both step an entry whose c is exactly 0 by +lr (`c > 0 ? -lr :
lr`), which moves the never-used, zero-gradient padded vocabulary rows every step; sign(0) = 0.

Adafactor (Shazeer & Stern 2018; the formulas of transformers' Adafactor with lr given,
relative_step=False, scale_parameter=False, warmup_init=False, beta1=None): a matrix's second
moment is kept as a row vector `exp_avg_sq_row` and a column vector `exp_avg_sq_col`, a vector's as
`exp_avg_sq`, the decay 1 - step^-0.8, the update clipped to RMS 1. Those statistics are means over
a whole matrix, so under tensor parallelism each rank would otherwise compute them over its slice
only and train a different model at every tp. Here they are the full matrix's: the sums a slice
cannot see (the column sums of a column-parallel slice, the row sums of a row-parallel one, the
update's sum of squares, the row factor's mean) are all-reduced over the TP group, and divided by
the full, unpadded size. Each TP rank so keeps the full matrix's factors for its own rows or
columns: the split factor is cut like the matrix, the other is identical on every TP rank, and
resharding a checkpoint is cutting and copying them (checkpoints/optimizer_state.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

ADAFACTOR_EPS = (1e-30, 1e-3)
ADAFACTOR_DECAY_RATE = -0.8
ADAFACTOR_CLIP_THRESHOLD = 1.0


class Lion(torch.optim.Optimizer):
    """Lion with decoupled weight decay (module docstring)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @staticmethod
    def new_state(param) -> dict:
        return {"step": 0, "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.to(param.dtype)
                state = self.state[param]
                if "exp_avg" not in state:
                    state.update(self.new_state(param))
                state["step"] += 1     # no bias correction: counted for the checkpoint only
                exp_avg = state["exp_avg"]
                direction = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
                if decay:
                    param.mul_(1 - lr * decay)
                param.add_(direction, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
        return loss


@dataclass(frozen=True)
class FullMatrix:
    """How one parameter (this rank's slice) sits in its full tensor: split along `dim` (0, 1, or
    None when every TP rank holds all of it) over `group`; `shape` the full, unpadded shape."""

    dim: int | None
    shape: tuple[int, ...]
    group: object = None

    @property
    def numel(self) -> int:
        out = 1
        for size in self.shape:
            out *= size
        return out


def _summed(tensor, whole: FullMatrix, over_split: bool):
    """`tensor`, all-reduced (sum) over the TP group when it is a partial sum over the split."""
    if over_split and whole.dim is not None and whole.group is not None:
        dist.all_reduce(tensor, group=whole.group)
    return tensor


class Adafactor(torch.optim.Optimizer):
    """Adafactor with the full matrix's statistics under tensor parallelism (module docstring).
    `matrices`: {parameter: FullMatrix}; a parameter not in it is its own full tensor."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, matrices: dict | None = None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.matrices = matrices or {}

    def full_matrix(self, param) -> FullMatrix:
        return self.matrices.get(param) or FullMatrix(None, tuple(param.shape))

    @staticmethod
    def new_state(param) -> dict:
        shape = param.shape
        state = {"step": 0}
        if len(shape) >= 2:
            state["exp_avg_sq_row"] = param.new_zeros(shape[:-1], dtype=torch.float32)
            state["exp_avg_sq_col"] = param.new_zeros(shape[:-2] + shape[-1:], dtype=torch.float32)
        else:
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group["lr"], group["weight_decay"])
        return loss

    def _update(self, param, lr: float, weight_decay: float) -> None:
        grad = param.grad.float()
        whole = self.full_matrix(param)
        state = self.state[param]
        if "step" not in state:
            state.update(self.new_state(param))
        state["step"] += 1
        beta2t = 1.0 - state["step"] ** ADAFACTOR_DECAY_RATE
        squared = grad.square().add_(ADAFACTOR_EPS[0])
        if grad.dim() >= 2:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            rows, cols = whole.shape[-2], whole.shape[-1]
            row_sum = _summed(squared.sum(dim=-1), whole, whole.dim == grad.dim() - 1)
            col_sum = _summed(squared.sum(dim=-2), whole, whole.dim == grad.dim() - 2)
            row.mul_(beta2t).add_(row_sum / cols, alpha=1.0 - beta2t)
            col.mul_(beta2t).add_(col_sum / rows, alpha=1.0 - beta2t)
            row_mean = _summed(row.sum(dim=-1, keepdim=True), whole, whole.dim == grad.dim() - 2)
            row_mean = row_mean / rows
            update = (row / row_mean).rsqrt_().unsqueeze(-1) * col.unsqueeze(-2).rsqrt()
            update.mul_(grad)
        else:
            state["exp_avg_sq"].mul_(beta2t).add_(squared, alpha=1.0 - beta2t)
            update = state["exp_avg_sq"].rsqrt().mul_(grad)
        sum_sq = _summed(update.square().sum(), whole, True)
        rms = (sum_sq / whole.numel).sqrt()
        update.div_((rms / ADAFACTOR_CLIP_THRESHOLD).clamp_(min=1.0)).mul_(lr)
        if weight_decay:
            param.add_(param, alpha=-weight_decay * lr)
        param.add_(-update.to(param.dtype))


def full_matrices(module, spec) -> dict:
    """{parameter: FullMatrix} for every parameter of `module` (a rank's model) that TP splits:
    the split travels with the canonical name (model/sharding.py tp_split)."""
    from llmlaunch.model.sharding import canonical_named_parameters, canonical_shapes, tp_split

    tp = module.tp_group
    shapes = canonical_shapes(spec)
    out = {}
    for name, param in canonical_named_parameters(module):
        split = tp_split(spec, name)
        if split is not None and tp.size > 1:
            out[param] = FullMatrix(split.dim, shapes[name], tp.process_group())
        elif split is not None and split.vocab:    # tp = 1: the table is padded all the same
            out[param] = FullMatrix(None, shapes[name])
    for layer in module.modules():   # the last stage's copy of a tied table
        for param in layer.parameters(recurse=False):
            if param not in out and getattr(param, "ds_pipe_replicated", False):
                whole = shapes["embed.token.weight"]
                out[param] = FullMatrix(0 if tp.size > 1 else None, whole,
                                        tp.process_group() if tp.size > 1 else None)
    return out


def client_optimizer(train, module, spec):
    """The torch optimizer for train.optimizer lion or adafactor (None for adamw: DeepSpeed builds
    it from ds_config.json's optimizer section)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if train.optimizer == "lion":
        return Lion(params, lr=train.lr, betas=(train.beta1, train.beta2),
                    weight_decay=train.weight_decay)
    if train.optimizer == "adafactor":
        return Adafactor(params, lr=train.lr, weight_decay=train.weight_decay,
                         matrices=full_matrices(module, spec))
    return None
