"""Scaling laws: compute-optimal model size and tokens, predicted loss, inference-targeted sizing.

The loss of N parameters trained on D tokens follows the parametric form of Hoffmann et al. 2022
(Chinchilla), eq. (2):   L(N, D) = E + A / N^alpha + B / D^beta.
Two published fits are offered:
  hoffmann    Hoffmann et al. 2022, Section 3.3 (Approach 3): E 1.69, A 406.4, B 410.7, alpha 0.34,
              beta 0.28. Its compute-optimal models are smaller than Chinchilla's own Approach 1/2.
  besiroglu   Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", eq. (4): E 1.8172,
              A 482.01, B 2085.43, alpha 0.3478, beta 0.3658. Refitted on the paper's data; its optimum
              agrees with Approach 1 and the ~20 tokens per parameter rule (the default).
Minimising L under C = 6 N D gives (Hoffmann et al. 2022, eq. (4)):
  N_opt = G (C/6)^a,  D_opt = (C/6) / N_opt,  a = beta / (alpha + beta),  G = (alpha A / (beta B))^(1/(alpha+beta))

Mixture-of-Experts (moe_point): compute is C = 6 N_active D (each token goes through k of the E
experts), and no loss is predicted: both fits are of dense models, and an MoE's loss is that of
neither a dense model of its total nor of its active size (Clark et al. 2022, "Unified Scaling Laws
for Routed Language Models", fit routed models with a law of their own).
"""
from __future__ import annotations

from dataclasses import dataclass

from .flops import training_flops


@dataclass(frozen=True)
class LossFit:
    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, params: float, tokens: float) -> float:
        """Predicted final loss (nats per token on the fit's data set)."""
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

    def compute_optimal(self, compute_flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) for a training budget of C FLOPs (closed form above)."""
        a = self.beta / (self.alpha + self.beta)
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        params = g * (compute_flops / 6) ** a
        return params, compute_flops / 6 / params

    def tokens_for_loss(self, params: float, target_loss: float) -> float | None:
        """Tokens N parameters need to reach target_loss, None when unreachable (below E + A/N^alpha)."""
        floor = self.E + self.A / params ** self.alpha
        if target_loss <= floor:
            return None
        return (self.B / (target_loss - floor)) ** (1 / self.beta)


FITS = {
    "besiroglu": LossFit("besiroglu", E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
    "hoffmann": LossFit("hoffmann", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
}
DEFAULT_FIT = "besiroglu"


@dataclass(frozen=True)
class ScalePoint:
    compute_flops: float
    params: float
    tokens: float
    loss: float | None
    """Predicted loss; None for an MoE model (moe_point)."""
    inference_tokens: float = 0.0
    total_flops: float = 0.0
    active_params: float = 0.0
    """MoE: parameters a token goes through (0: a dense model, all of them)."""

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params

    def to_dict(self) -> dict:
        out = {"compute_flops": self.compute_flops, "params": self.params, "tokens": self.tokens,
               "tokens_per_param": self.tokens_per_param, "loss": self.loss}
        if self.inference_tokens:
            out.update({"inference_tokens": self.inference_tokens, "total_flops": self.total_flops})
        if self.active_params:
            out["active_params"] = self.active_params
        return out


def point(fit: LossFit, params: float, tokens: float) -> ScalePoint:
    return ScalePoint(training_flops(params, tokens), params, tokens, fit.loss(params, tokens))


def moe_point(params: float, active_params: float, tokens: float) -> ScalePoint:
    """An MoE model of `params` parameters, `active_params` of them per token, trained on `tokens`:
    C = 6 N_active D; no loss prediction (see the module docstring)."""
    if not 0 < active_params <= params:
        raise ValueError(f"--active-params {active_params:.3g} must be positive and at most --params "
                         f"{params:.3g}")
    return ScalePoint(training_flops(active_params, tokens), params, tokens, None,
                      active_params=active_params)


def optimal_point(fit: LossFit, compute_flops: float) -> ScalePoint:
    return point(fit, *fit.compute_optimal(compute_flops))


def inference_optimal(fit: LossFit, target_loss: float, inference_tokens: float,
                      grid: int = 800) -> ScalePoint:
    """The model reaching target_loss with the least training plus inference compute
    (6 N D + 2 N D_inference; Sardana et al. 2023, "Beyond Chinchilla-Optimal"): when many tokens
    will be served, a smaller model trained on more tokens. N searched on a log grid, 1e6 to 1e14."""
    best = None
    for i in range(grid + 1):
        params = 10 ** (6 + 8 * i / grid)
        tokens = fit.tokens_for_loss(params, target_loss)
        if tokens is None:
            continue
        total = training_flops(params, tokens) + 2 * params * inference_tokens
        if best is None or total < best.total_flops:
            best = ScalePoint(training_flops(params, tokens), params, tokens,
                              fit.loss(params, tokens), inference_tokens, total)
    if best is None:
        raise ValueError(f"--target-loss {target_loss} is below what the {fit.name} fit can reach "
                         f"(its irreducible loss E = {fit.E})")
    return best
