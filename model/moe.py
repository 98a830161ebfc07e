"""Mixture-of-Experts blocks: the router, the experts, the block that replaces its MLP by them, and
the router's losses.

An MoE block is the dense block (model/layers.py) with its MLP replaced by `MoELayer`:

    router    logits = x W_r^T [T, E] (replicated over TP); softmax in fp32, then the top k;
              with norm_topk_prob the k weights are renormalised to sum to 1 (transformers'
              MixtralTopKRouter / Qwen3MoeTopKRouter); `SigmoidRouter` is DeepSeek-V3's
    experts   E SwiGLU MLPs of width f_e, down(silu(gate x) * up x), each split over TP like a
              dense MLP; a rank holds E/ep of them (model/moe_dispatch.py routes the tokens)
    shared    optionally an MLP of width f_s every token goes through, with Qwen2-MoE's
              sigmoid gate Linear(h, 1) on its output
    out       sum_j w_j expert_{e_j}(x) (+ shared)

The load-balancing loss is transformers' `load_balancing_loss_func` (Switch Transformer, Fedus et
al. 2022, eqs. 4-6), over the MoE layers of one forward pooled: f_e = the share of the L T k
routed copies that chose expert e (counted from the top-k, so sum_e f_e = k), P_e = the mean
router probability of e over the L T rows, loss = E sum_e f_e P_e. The router z-loss (ST-MoE,
Zoph et al. 2022, eq. 5) is mean_t (log sum_e exp logits_te)^2, averaged over the MoE layers. The
training loss is the cross-entropy + router_aux_loss_coef * aux + router_z_loss_coef * z.

Because aux pools the layers, it is computed where the logits are (the loss) from what every MoE
layer adds to a carry that travels with the hidden states, also between pipeline stages: an MoE
model's items pass (hidden [b, s, h], counts [L_moe, E + 1] int64, sums [E + 1] fp32) instead of
hidden alone. counts[l, e] is layer l's copies routed to e, counts[l, E] those it dropped; sums[e]
is sum over layers and tokens of the router probability of e (differentiable: its gradient reaches
every router through DeepSpeed's pipeline as the hidden states' does), sums[E] the layers' z terms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llmlaunch.topology.model_spec import ModelSpec

from .layers import MLP, FinalNorm, LMHead, TransformerBlock
from .moe_dispatch import ExpertParallelGroup, combine, dispatch, plan_routing
from .tp import (TensorParallelGroup, copy_to_tensor_parallel_region, divide,
                 reduce_from_tensor_parallel_region, vocab_parallel_cross_entropy)


class _Weight(nn.Module):
    """One weight matrix [out, in] under the name `weight` (canonical names end in .weight)."""

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))


class Expert(nn.Module):
    """One routed expert's SwiGLU MLP on this TP rank: gate_up [2 f_e/t, h] (gate and up rows
    split separately, as a dense gate_up), down [h, f_e/t]. Its output is this rank's partial sum;
    MoELayer all-reduces every local expert's rows at once."""

    def __init__(self, hidden: int, width: int, tp: TensorParallelGroup):
        super().__init__()
        local = divide(width, tp.size, "expert_ffn_hidden")
        self.gate_up = _Weight(2 * local, hidden)
        self.down = _Weight(hidden, local)

    def forward(self, x):
        gate, up = F.linear(x, self.gate_up.weight).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down.weight)


class Router(nn.Module):
    """Softmax-then-top-k (Mixtral, Qwen-MoE). route(x [T, h]) -> (logits [T, E], probs [T, E]
    fp32, weights [T, k] fp32, experts [T, k])."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.k, self.normalise = spec.experts_per_token, spec.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(spec.experts, spec.hidden))

    def route(self, x):
        logits = F.linear(x, self.weight)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, experts = torch.topk(probs, self.k, dim=-1)
        if self.normalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, weights, experts


class SigmoidRouter(nn.Module):
    """DeepSeek-V3's router (transformers' DeepseekV3TopkRouter): scores = sigmoid(x W_r^T) in
    fp32; the experts are chosen on scores + a selection bias (`e_score_correction_bias`, moved by
    DeepSeek-V3's auxiliary-loss-free balancing, not by gradients), within the topk_group of
    n_group groups whose two best biased scores sum highest; the weights are the unbiased scores
    of the chosen, renormalised (norm_topk_prob) and times routed_scaling_factor. probs, for the
    load-balancing statistics: the scores normalised per token (DeepSeek-V3's sequence-wise loss)."""

    def __init__(self, hidden: int, experts: int, k: int, n_group: int = 1, topk_group: int = 1,
                 routed_scaling_factor: float = 1.0, norm_topk_prob: bool = True):
        super().__init__()
        if experts % n_group or not 1 <= topk_group <= n_group:
            raise ValueError(f"n_group {n_group} must divide the {experts} experts and topk_group "
                             f"{topk_group} be between 1 and it")
        self.k, self.groups, self.topk_group = k, n_group, topk_group
        self.scale, self.normalise = routed_scaling_factor, norm_topk_prob
        self.weight = nn.Parameter(torch.empty(experts, hidden))
        self.register_buffer("e_score_correction_bias", torch.zeros(experts))

    def route(self, x):
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid()
        biased = scores + self.e_score_correction_bias
        tokens, experts = biased.shape
        grouped = biased.view(tokens, self.groups, experts // self.groups)
        group_score = grouped.topk(min(2, experts // self.groups), dim=-1)[0].sum(-1)
        keep = torch.zeros_like(group_score).scatter_(
            1, group_score.topk(self.topk_group, dim=-1)[1], 1.0)
        allowed = keep.unsqueeze(-1).expand_as(grouped).reshape(tokens, experts).bool()
        chosen = biased.masked_fill(~allowed, float("-inf")).topk(self.k, dim=-1)[1]
        weights = scores.gather(1, chosen)
        if self.normalise:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return logits, scores / scores.sum(dim=-1, keepdim=True), weights * self.scale, chosen


class MoELayer(nn.Module):
    """The MLP of an MoE block on one rank: the router, this rank's E/ep experts (named by their
    global index: experts.<e>), the shared expert and its gate. forward(x [b, s, h]) -> (out
    [b, s, h], counts [E + 1] int64: copies routed to each expert and dropped, sums [E + 1] fp32:
    router probabilities summed over the tokens and this layer's z term)."""

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup, ep: ExpertParallelGroup,
                 router: nn.Module | None = None):
        super().__init__()
        if spec.experts % ep.size:
            raise ValueError(f"ep={ep.size} does not divide the {spec.experts} experts")
        self.experts_total, self.k = spec.experts, spec.experts_per_token
        self.capacity_factor = spec.capacity_factor
        self.tp, self.ep = tp, ep
        self.router = router if router is not None else Router(spec)
        self.experts = nn.ModuleDict({str(e): Expert(spec.hidden, spec.expert_ffn_hidden, tp)
                                      for e in ep.local_experts(spec.experts)})
        self.shared = (MLP(spec, tp, width=spec.shared_expert_ffn_hidden)
                       if spec.shared_expert_ffn_hidden else None)
        self.shared_gate = _Weight(1, spec.hidden) if spec.shared_expert_gate else None
        self.dispatch_rows = 0

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, probs, weights, chosen = self.router.route(flat)
        routing = plan_routing(chosen, self.experts_total, self.ep, self.capacity_factor)
        # rows of the larger of the two all-to-all buffers (what `validate` compares with the
        # planner's alltoall_buffer_bytes): T k sent, or what arrived for this rank's experts
        self.dispatch_rows = max(sum(routing.send), sum(routing.recv))
        rows = copy_to_tensor_parallel_region(dispatch(flat, routing, self.k, self.ep), self.tp)
        parts = [expert(chunk) for expert, chunk in
                 zip(self.experts.values(), rows.split(routing.expert_rows))]
        outputs = reduce_from_tensor_parallel_region(torch.cat(parts), self.tp)
        out = combine(outputs, routing, weights, self.ep)
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:
                shared = torch.sigmoid(F.linear(flat, self.shared_gate.weight)) * shared
            out = out + shared
        counts = torch.cat([routing.selected, routing.selected.new_tensor([routing.dropped])])
        z = torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        return out.view(shape), counts, torch.cat([probs.sum(0), z.view(1)])


# ---------------------------------------------------------------------------------------------
# the block and the items around it in an MoE model: they pass the carry along
# ---------------------------------------------------------------------------------------------

def open_carry(x, spec: ModelSpec):
    """(hidden, counts, sums) of an item's input: the carry as it came, or a fresh one (zeros)
    when the input is the embedding's bare hidden states. The fresh sums require grad so that a
    stage whose blocks are all dense still hands DeepSpeed a tensor to run backward from."""
    if isinstance(x, tuple):
        return x
    counts = torch.zeros(spec.moe_layers, spec.experts + 1, dtype=torch.long, device=x.device)
    sums = torch.zeros(spec.experts + 1, dtype=torch.float32, device=x.device,
                       requires_grad=torch.is_grad_enabled())
    return x, counts, sums


class MoETransformerBlock(TransformerBlock):
    """A block of an MoE model: the MLP is MoELayer from block dense_layers on (a dense MLP
    before), and forward takes and returns the carry (module docstring)."""

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup, index: int, recompute: str,
                 ep: ExpertParallelGroup, cp=None):
        self._moe_args = (spec, tp, ep) if index >= spec.dense_layers else None
        self.moe_index = index - spec.dense_layers
        super().__init__(spec, tp, index, recompute, cp)
        self.spec = spec

    def build_mlp(self, spec: ModelSpec, tp: TensorParallelGroup) -> nn.Module:
        if self._moe_args is None:
            return super().build_mlp(spec, tp)
        return MoELayer(*self._moe_args)

    def forward(self, x):
        hidden, counts, sums = open_carry(x, self.spec)
        if self.recompute_full and torch.is_grad_enabled():
            return checkpoint(self._carry_block, hidden, counts, sums, use_reentrant=False)
        return self._carry_block(hidden, counts, sums)

    def _carry_block(self, hidden, counts, sums):
        hidden = hidden + self.attn(self.ln1(hidden))
        if not isinstance(self.mlp, MoELayer):
            return hidden + self.mlp(self.ln2(hidden)), counts, sums
        out, layer_counts, layer_sums = self.mlp(self.ln2(hidden))
        counts = counts.clone()
        counts[self.moe_index] = layer_counts
        return hidden + out, counts, sums + layer_sums


class MoEFinalNorm(FinalNorm):
    """The final norm of an MoE model: normalises the hidden states, passes the carry on."""

    def forward(self, x):
        hidden, *carry = x
        return (super().forward(hidden), *carry)


class MoELMHead(LMHead):
    """The untied head of an MoE model: this rank's logits, and the carry on to the loss."""

    def forward(self, x):
        hidden, *carry = x
        return (super().forward(hidden), *carry)


def tied_moe_head_forward(embedding, x):
    """A tied head of an MoE model (the token table as output projection), carry passed on."""
    hidden, *carry = x
    return (embedding.logits(hidden), *carry)


# ---------------------------------------------------------------------------------------------
# the router's losses
# ---------------------------------------------------------------------------------------------

def load_balancing_loss(counts: torch.Tensor, prob_sums: torch.Tensor, tokens: int) -> torch.Tensor:
    """transformers' load_balancing_loss_func from what the MoE layers carried: counts [L, E(+1)]
    routed copies per layer and expert (a last column of drops is ignored), prob_sums [E] the
    router probabilities summed over the L layers and T tokens: E sum_e (F_e / L T)(P_e / L T)."""
    experts = prob_sums.shape[0]
    rows = counts.shape[0] * tokens
    routed = counts[:, :experts].sum(0).to(prob_sums.dtype)
    return experts * torch.sum(routed / rows * prob_sums / rows)


class MoELoss:
    """The training loss of an MoE model: loss_fn((logits [b, s, V_p/t], counts, sums), labels) =
    mean token cross-entropy + router_aux_loss_coef * aux + router_z_loss_coef * z (under no_grad,
    evaluation, the cross-entropy alone). It keeps each training micro-batch's aux, z and counts
    until `take_step_stats` (the engine's metrics, per step)."""

    def __init__(self, spec: ModelSpec, tp: TensorParallelGroup):
        self.vocab, self.tp = spec.vocab, tp
        self.aux_coef, self.z_coef = spec.router_aux_loss_coef, spec.router_z_loss_coef
        self.layers, self.experts = spec.moe_layers, spec.experts
        self.last: dict = {}
        self._reset()

    def _reset(self):
        self.micro_batches, self.aux_sum, self.z_sum, self.counts = 0, 0.0, 0.0, None

    def __call__(self, output, labels: torch.Tensor) -> torch.Tensor:
        logits, counts, sums = output
        loss = vocab_parallel_cross_entropy(logits, labels, self.tp, self.vocab).mean()
        if not torch.is_grad_enabled():
            return loss    # evaluation: the cross-entropy alone, nothing counted
        aux = load_balancing_loss(counts, sums[:self.experts], labels.numel())
        z = sums[self.experts] / self.layers
        total = loss + self.aux_coef * aux + self.z_coef * z
        self.last = {"aux_loss": aux.detach(), "z_loss": z.detach()}
        self.micro_batches += 1
        self.aux_sum += float(aux.detach())
        self.z_sum += float(z.detach())
        self.counts = counts.detach().clone() if self.counts is None else self.counts + counts
        return total

    def take_step_stats(self) -> dict | None:
        """{micro_batches, aux_loss, z_loss (means), counts [L, E+1] (summed)} of the micro-batches
        since the last call (None when there were none), and reset."""
        if not self.micro_batches:
            return None
        out = {"micro_batches": self.micro_batches, "aux_loss": self.aux_sum / self.micro_batches,
               "z_loss": self.z_sum / self.micro_batches, "counts": self.counts}
        self._reset()
        return out
