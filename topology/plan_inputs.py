"""What the planner is asked: one model on one cluster, searched or at one known layout.

`PlanInputs` is what `plan` resolves from its flags and what every other caller builds with
`layout_inputs`: the one adapter from "a run of this model at this layout on this hardware" to the
planner. The trainer's prediction, preflight, validate, the run page and the published-runs table
all go through it, so `auto` precision and the node size are resolved once, the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .hardware import Cluster, GpuSpec
from .layout import Layout
from .model_spec import ModelSpec
from .approximations import planning_notes
from .params import active_params, total_params
from .planner import Candidate, Pins, PlanOptions, evaluate

PRECISIONS_OFFERED = ("bf16", "fp32")
"""What a run may ask for ('auto' resolves to one of them); `plan --precision` also takes fp8 (an
estimate: llmlaunch's model trains in bf16 or fp32)."""


@dataclass(frozen=True)
class PlanInputs:
    """A model, a cluster and the options of one planning question."""

    spec: ModelSpec
    cluster: Cluster
    options: PlanOptions
    pins: Pins = field(default_factory=Pins)
    """Dimensions fixed by the caller (none: searched)."""
    params: int = 0
    """The model's parameter count as reported (0: total_params of spec)."""
    defaults: tuple[str, ...] = ()
    """Human lines: what was defaulted or derived, and how (printed in the plan's `defaults` line)."""
    params_source: str = "formula: topology/params.py"
    """Where `params` came from."""
    approximations: tuple[str, ...] | None = None
    """What the planner approximates for this model and by how much (approximations.py; None:
    planning_notes of the spec)."""

    def __post_init__(self):
        if not self.params:
            object.__setattr__(self, "params", total_params(self.spec))
        object.__setattr__(self, "defaults", tuple(self.defaults))
        notes = planning_notes(self.spec) if self.approximations is None else self.approximations
        object.__setattr__(self, "approximations", tuple(notes))

    @property
    def active_params(self) -> int:
        """Parameters a token goes through (params for a dense model; MoE: params.active_params)."""
        return active_params(self.spec, self.params)


def resolve_precision(requested: str, device_precision: str) -> str:
    """The training precision: 'auto' is the device's own (GpuSpec.precision in the planner: bf16 on
    GPUs, fp32 on a CPU; for a running rank, what its hardware is), anything else as given."""
    if requested == "auto":
        return device_precision
    if requested not in PRECISIONS_OFFERED + ("fp8", "bf16-megatron"):
        raise ValueError(f"precision must be auto, bf16, fp8 or fp32, got {requested!r}")
    return requested


def cluster_for(gpus: int, gpus_per_node: int, gpu: GpuSpec) -> Cluster:
    """`gpus` accelerators in nodes of `gpus_per_node`; a job smaller than a node is one node of
    `gpus` (it cannot straddle nodes it does not have)."""
    return Cluster(gpus=gpus, gpus_per_node=min(gpus_per_node, gpus), gpu=gpu)


def layout_inputs(spec: ModelSpec, layout: Layout, *, gpu: GpuSpec, gpus_per_node: int,
                  precision: str = "auto", flash_attention: bool = True,
                  notes: tuple[str, ...] = (), optimizer: str = "adamw") -> PlanInputs:
    """PlanInputs for a known layout (world size dp*pp*tp): the one adapter from a run to the
    planner. `precision` may be 'auto' (resolve_precision); `optimizer` train.optimizer's."""
    resolved = resolve_precision(precision, gpu.precision)
    cluster = cluster_for(layout.world_size, gpus_per_node, gpu)
    options = PlanOptions(global_batch=layout.global_batch, seq_len=spec.seq_len,
                          precision=resolved, flash_attention=flash_attention,
                          optimizer=optimizer)
    lines = (f"layout {layout.describe()}, micro-batch {layout.micro_batch}, grad_accum "
             f"{layout.grad_accum}",
             f"precision {resolved}" + (" (auto)" if precision == "auto" else ""),
             f"gpus per node {cluster.gpus_per_node}"
             + (f" (of {gpus_per_node}: the job is one node)" if gpus_per_node > layout.world_size
                else ""))
    return PlanInputs(spec=spec, cluster=cluster, options=options, defaults=(*notes, *lines))


def estimate_layout(inputs: PlanInputs, layout: Layout) -> Candidate:
    """The planner's estimate of exactly `layout`; ValueError when it cannot be estimated at all
    (e.g. tp does not divide the heads), naming why."""
    cand = evaluate(inputs.spec, inputs.cluster, layout, inputs.options)
    if not cand.estimated:
        raise ValueError(f"the planner cannot estimate {layout.describe()}: "
                         + "; ".join(cand.reasons))
    return cand
