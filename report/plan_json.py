"""`plan --json`: the public JSON object of a plan (schema: docs/plan-json.md)."""
from __future__ import annotations

from llmlaunch.topology.cost import RunCost
from llmlaunch.topology.plan_inputs import PlanInputs
from llmlaunch.topology.planner import Candidate, SearchResult


def plan_json(inputs: PlanInputs, result: SearchResult, chosen: Candidate | None,
              horizon: RunCost | None, tokens: float | None) -> dict:
    """The public JSON object of `plan --json` (schema: docs/plan-json.md)."""
    spec, cluster = inputs.spec, inputs.cluster
    out = {
        "model": {"params": inputs.params, "arch": spec.arch, "layers": spec.layers,
                  "hidden": spec.hidden, "heads": spec.heads, "kv_heads": spec.kv_heads,
                  "ffn_hidden": spec.ffn_hidden, "vocab": spec.vocab, "seq_len": spec.seq_len,
                  "name": spec.name, "active_params": inputs.active_params,
                  "params_source": inputs.params_source,
                  "approximations": list(inputs.approximations)},
        "cluster": {"gpus": cluster.gpus, "gpus_per_node": cluster.gpus_per_node,
                    "gpu": cluster.gpu.name, "nodes": cluster.nodes,
                    "memory_gib": cluster.gpu.memory_gib, "peak_tflops": cluster.gpu.peak_tflops},
        "global_batch": inputs.options.global_batch,
        "precision": inputs.options.precision,
        "engine": inputs.options.engine,
        "capacity_factor": inputs.options.capacity_factor,
        "optimizer": inputs.options.optimizer,
        "candidates": [c.to_dict() for c in result.candidates],
        "evaluated": result.evaluated,
        "defaults": list(inputs.defaults),
    }
    if chosen is not None and not chosen.fits:
        out["pinned"] = chosen.to_dict()
    if horizon is not None:
        out["horizon"] = dict(horizon.to_dict(), tokens=tokens)
    out["rejected"] = [{"dp": c.layout.dp, "pp": c.layout.pp, "tp": c.layout.tp, "cp": c.layout.cp,
                        "ep": c.layout.ep,
                        "micro_batch": c.layout.micro_batch, "zero_stage": c.layout.zero_stage,
                        "offload": c.layout.offload, "recompute": c.layout.recompute, "reasons": c.reasons} for c in result.rejected]
    return out
