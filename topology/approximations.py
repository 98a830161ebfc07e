"""What the planner approximates for a model shape, and by how much: one line per feature, printed
under the plan's model lines (report/text.py) and listed in `plan --json` (model.approximations).
Exact terms say nothing; each note names the feature, what the estimate does instead and a bound on
the error it causes, from the same formulas the estimate uses (params.py, memory.py, flops.py).
"""
from __future__ import annotations

from .flops import attended_keys
from .memory import activation_bytes_per_layer
from .model_spec import ModelSpec
from .params import total_params


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2g}%" if whole else "0%"


def planning_notes(spec: ModelSpec, exact_params: int | None = None) -> list[str]:
    """One line per feature the planner approximates for `spec`, with how far off it could be
    (empty when every term is exact). exact_params: transformers' count, when known."""
    notes = []
    if exact_params:
        formula = total_params(spec)
        if formula != exact_params:
            notes.append(f"parameter formula {formula:,} vs transformers' {exact_params:,} "
                         f"({_share(formula - exact_params, exact_params)}): weights, gradients and "
                         "optimizer states per stage use the formula")
    act = activation_bytes_per_layer(spec, 1, 1, "none")
    if spec.moe:
        per_token = spec.experts_per_token * spec.hidden * 2         # k copies, 2 bytes
        notes.append(f"MoE: each GPU holds {spec.experts}/ep experts of its layers (ep, the expert-"
                     f"parallel degree, searched or --ep); FLOPs per token from the active parameters "
                     f"({spec.experts_per_token} of {spec.experts} experts), routing perfectly balanced "
                     f"(no token dropped; the all-to-all priced at the capacity factor); the dispatch "
                     f"buffer (k = {spec.experts_per_token} copies of each token) is counted once per "
                     f"stage at the balanced load: an imbalanced router's excess is not (measured "
                     f"up to 12% of the buffer, {_share(per_token * spec.seq_len * 0.12, act)} of a "
                     f"layer's activations)")
    if spec.moe and spec.dense_layers:
        notes.append(f"the first {spec.dense_layers} dense layers are counted as dense in memory and "
                     "time, but the pipeline split weighs every block as an MoE block (the stage "
                     "holding them gets as many blocks as the others)")
    if spec.windowed_layers and spec.sliding_window < spec.seq_len:
        keys = attended_keys(spec)
        notes.append(f"sliding window of {spec.sliding_window} tokens on {spec.windowed_layers} of "
                     f"{spec.layers} layers: attention FLOPs over {keys:,.0f} keys per query (the "
                     "layers' average, the same on every stage); activations as full attention "
                     "(flash keeps no s x s term; without flash the s^2 terms are over)")
    if spec.parallel_residual:
        notes.append(f"parallel attention + MLP residual planned as sequential: same FLOPs and "
                     f"parameters; the second norm input counted though shared: activations "
                     f"{_share(2 * spec.seq_len * spec.hidden, act)} over")
    if spec.rotary and spec.rotary_fraction < 1:
        rope_bytes = 2 * spec.seq_len * (spec.q_width + spec.kv_hidden)
        notes.append(f"RoPE on {spec.rotary_fraction:.0%} of each head counted at full width: "
                     f"activations {_share(rope_bytes * (1 - spec.rotary_fraction), act)} over")
    if not spec.runnable:
        notes.append(f"host overhead: llmlaunch's model does not run {spec.arch}; llama's op counts "
                     "stand in (matters only where a layout is host-bound)")
    if spec.arch == "decoder":
        notes.append(f"read generically with llama's keys (no reader for this model_type); MLP "
                     f"{spec.mlp} chosen as the closest to the exact count")
    return notes
