"""Before any rank starts: a model whose state cannot fit a rank's memory is refused in one line.

The check is a lower bound, closed-form so that it answers at once whatever the model's size (the
planner's full estimate walks the layers: minutes for a billion of them): the fullest pipeline
stage holds at least floor(layers / pp) blocks, and each block's parameters (its TP slice) carry
their weights, gradients and optimizer states as topology/memory.py's `model_state_bytes` counts
them (ZeRO, Rajbhandari et al. 2020 §5). Embedding, head, activations and buffers only add to it, so
a refusal is certain, never a guess. The capacity is the accelerator's memory (cluster.gpu in the
catalog) on GPUs, and on CPU ranks this host's memory shared by the ranks it runs.
"""
from __future__ import annotations

GIB = 2 ** 30


def least_model_state_bytes(spec, layout, precision: str) -> float:
    """A lower bound on the model-state bytes of the fullest rank (module docstring)."""
    from llmlaunch.topology.memory import PRECISIONS, model_state_bytes, stage_params

    blocks = spec.layers // layout.pp
    params = stage_params(spec, -1, layout.pp, layout.tp, blocks)   # blocks only: no embedding
    states = model_state_bytes(params, layout.dp, layout.zero_stage, PRECISIONS[precision])
    return sum(states.values())


def memory_refusal(config, ranks_per_host: int, host_bytes: float) -> str | None:
    """One line when the model cannot fit a rank (None when it may): on a CPU cluster against
    `host_bytes` shared by `ranks_per_host` ranks, else against cluster.gpu's memory."""
    from llmlaunch.topology.hardware import gpu

    layout, spec = config.layout_obj(), config.model_spec()
    on_cpu = config.cluster.gpu == "cpu"
    precision = config.train.precision
    if precision == "auto":
        precision = "fp32" if on_cpu else "bf16"
    if precision not in ("fp32", "bf16"):
        return None
    need = least_model_state_bytes(spec, layout, precision)
    if on_cpu:
        have, where = host_bytes / ranks_per_host, (f"this host's {host_bytes / GIB:.1f} GiB shared "
                                                    f"by {ranks_per_host} ranks")
    else:
        device = gpu(config.cluster.gpu, measure=False)
        have, where = device.memory_gib * GIB, f"the {device.memory_gib:g} GiB of one {device.name}"
    if need <= have:
        return None
    m = config.model
    return (f"model (layers {m.layers}, hidden {m.hidden}, vocab {m.vocab}) needs at least "
            f"{need / GIB:,.1f} GiB per rank for its blocks' weights, gradients and optimizer "
            f"states alone ({precision}, ZeRO-{layout.zero_stage}, pp {layout.pp}, tp {layout.tp}, "
            f"dp {layout.dp}), more than {where}: shrink the model or split it further "
            "(layout.pp, layout.tp, layout.zero_stage)")


def check_memory_fits(config, ranks_per_host: int | None) -> None:
    """ValueError with memory_refusal's line (this host's total memory, psutil); ranks_per_host
    None or 0: the layout's world, all on this host."""
    import psutil

    ranks = ranks_per_host or config.layout_obj().world_size
    refusal = memory_refusal(config, ranks, psutil.virtual_memory().total)
    if refusal:
        raise ValueError(refusal)


def fitting_layout(config, where):
    """run.yaml's layout once check_memory_fits passed: the supervisor's first use of it, before
    the data step. `where`: the Slurm allocation (its tasks per node), or --nproc (None: the
    layout's world, all on this host)."""
    check_memory_fits(config, getattr(where, "tasks_per_node", where))
    return config.layout_obj()
