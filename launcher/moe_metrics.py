"""What a Mixture-of-Experts run logs per step: the router's losses and how evenly each MoE layer
spread its tokens over its experts.

The loss function of the last pipeline stage (model/moe.py MoELoss) keeps, per step, the mean
load-balancing and z losses of its micro-batches and the routed copies per layer and expert. One
all-reduce over the job (a few numbers per layer) brings every replica's to every rank:

    aux_loss, z_loss          means over the step's micro-batches and the data-parallel replicas
                              (unweighted by their coefficients)
    expert_load               per MoE layer: the largest and smallest share of the layer's routed
                              copies that one expert took, and max_over_mean = E x the largest
                              share (1.0: perfectly balanced; the planner assumes 1.0)
    expert_load_max_over_mean the worst layer's
    dropped_fraction          copies over an expert's capacity (capacity_factor > 0), of all routed
"""
from __future__ import annotations


def step_moe_stats(run) -> dict | None:
    """This step's router statistics (module docstring); collective: every rank calls it after
    every step. None for a dense model."""
    import torch
    import torch.distributed as dist

    spec = run.spec
    if not spec.moe:
        return None
    module = run.engine.module
    stats = module.loss_fn.take_step_stats()
    layers, experts = spec.moe_layers, spec.experts
    buffer = torch.zeros(3 + layers * (experts + 1), dtype=torch.float64)
    if stats is not None and module.tp_group.rank == 0:     # one copy per replica
        buffer[0], buffer[1], buffer[2] = stats["aux_loss"], stats["z_loss"], 1.0
        buffer[3:] = stats["counts"].reshape(-1).to(torch.float64).cpu()
    device = run.device
    buffer = buffer.to(device)
    dist.all_reduce(buffer)
    buffer = buffer.cpu()
    replicas = max(float(buffer[2]), 1.0)
    return summarise(float(buffer[0]) / replicas, float(buffer[1]) / replicas,
                     buffer[3:].view(layers, experts + 1), first_block=spec.dense_layers)


def summarise(aux_loss: float, z_loss: float, counts, first_block: int = 0) -> dict:
    """The metrics record's MoE keys from the losses and the counts [L, E + 1] of the MoE layers
    (the last column: dropped copies); layers are named by their block index (the MoE layers
    start at block `first_block`)."""
    experts = counts.shape[1] - 1
    load = []
    for layer, row in enumerate(counts):
        routed = row[:experts]
        total = float(routed.sum())
        shares = (routed / total).tolist() if total else [0.0] * experts
        load.append({"layer": first_block + layer, "max_share": max(shares), "min_share": min(shares),
                     "max_over_mean": max(shares) * experts})
    routed_all = float(counts[:, :experts].sum())
    return {"aux_loss": aux_loss, "z_loss": z_loss, "expert_load": load,
            "expert_load_max_over_mean": max(entry["max_over_mean"] for entry in load),
            "dropped_fraction": float(counts[:, experts].sum()) / routed_all if routed_all else 0.0}


def moe_log_text(stats: dict) -> str:
    """' | aux 0.0123 load 1.31x (layer 2)': what the training log line adds."""
    worst = max(stats["expert_load"], key=lambda entry: entry["max_over_mean"])
    text = (f" | aux {stats['aux_loss']:.4f} load {worst['max_over_mean']:.2f}x (layer "
            f"{worst['layer']})")
    if stats["dropped_fraction"]:
        text += f" dropped {stats['dropped_fraction']:.1%}"
    return text
