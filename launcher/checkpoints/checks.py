"""What a resume checks a tag against before loading it: the model's shapes, the global batch,
and whether its state can load as it is or must move to this run's layout. Each refusal is one
line naming what differs and what would work.
"""
from __future__ import annotations

from .manifest import Manifest


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from as configured."""


# What DeepSpeed's engines depend on, besides the engine (micro-batch, accumulation and recompute
# do not change the state a rank holds).
LAYOUT_STATE_KEYS = ("dp", "pp", "tp", "zero_stage", "offload", "cp")
"""What a rank's share of the state depends on: cp too, since ZeRO partitions over dp x cp (sequence
parallelism changes no state: the norm weights stay whole on every rank)."""


def state_layout(manifest: Manifest) -> dict:
    """The layout and engine a tag's state was written under (llmlaunch 0.1's markers lack the
    engine and offload: the pipeline engine, no offload)."""
    saved = manifest.layout or {}
    out = {k: saved.get(k) for k in LAYOUT_STATE_KEYS}
    out["offload"] = out["offload"] or "none"
    out["zero_stage"] = out["zero_stage"] if out["zero_stage"] is not None else 0
    out["cp"] = out["cp"] or 1                   # tags written before context parallelism
    out["engine"] = manifest.engine
    return out


def layout_state_of(layout, engine: str) -> dict:
    """The same record for a run's Layout and engine."""
    return {**{k: getattr(layout, k) for k in LAYOUT_STATE_KEYS}, "engine": engine}


def same_state_layout(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in (*LAYOUT_STATE_KEYS, "engine"))


def describe_state(state: dict) -> str:
    """'dp=2 pp=2 tp=1, ZeRO-1, pipeline engine' (offload when there is one)."""
    off = f", offload {state['offload']}" if state.get("offload", "none") != "none" else ""
    cp = f" cp={state['cp']}" if state.get("cp", 1) != 1 else ""
    return (f"dp={state['dp']} pp={state['pp']} tp={state['tp']}{cp}, ZeRO-{state['zero_stage']}{off}, "
            f"{state['engine']} engine")


def _shape(shape) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]" if shape is not None else "absent"


def model_refusal(manifest: Manifest, spec) -> str | None:
    """None when the tag holds this model; else one line naming the first tensor whose shape
    differs (key and both shapes) and the model keys behind it."""
    from llmlaunch.model.sharding import canonical_shapes
    from llmlaunch.topology.model_spec import ModelSpec

    if manifest.model is None or manifest.model == spec.to_dict():
        return None
    try:
        saved_spec = ModelSpec(**manifest.model)
    except (TypeError, ValueError) as exc:
        return (f"checkpoint {manifest.tag} records a model this llmlaunch cannot read ({exc}): "
                "resume it with the release that wrote it")
    saved, wanted = canonical_shapes(saved_spec), canonical_shapes(spec)
    keys = [k for k in spec.to_dict() if manifest.model.get(k) != spec.to_dict()[k]]
    differ = ", ".join(f"model.{k} {manifest.model.get(k)!r} -> {spec.to_dict()[k]!r}" for k in keys)
    first = next((n for n in [*wanted, *saved] if saved.get(n) != wanted.get(n)), None)
    where = (f"{first} is {_shape(saved.get(first))} in the checkpoint and {_shape(wanted.get(first))}"
             f" in the model" if first else "the tensors' shapes agree")
    return (f"checkpoint {manifest.tag} holds another model: {where} ({differ}); a checkpoint "
            "moves between layouts, not between model shapes: restore the model section, or "
            "start a new run (checkpoint.init_hf for weights only)")


def batch_refusal(manifest: Manifest, layout) -> str | None:
    """None when the run trains the tag's global batch. The data position (consumed samples) and
    the data order (data/loader.py: an epoch is a whole number of global batches) and the
    learning-rate schedule's steps all count in sequences of that batch: another one is a new
    run, not a resume (docs/checkpoints.md)."""
    if manifest.global_batch == layout.global_batch:
        return None
    saved = manifest.layout or {}
    how = ""
    if all(k in saved for k in ("micro_batch", "grad_accum", "dp")):
        how = (f" (micro_batch {saved['micro_batch']} x grad_accum {saved['grad_accum']} x dp "
               f"{saved['dp']})")
    fits = manifest.global_batch / (layout.micro_batch * layout.dp)
    fix = (f"set layout.grad_accum={int(fits)}" if fits == int(fits) and fits >= 1 else
           "set layout.micro_batch and layout.grad_accum so that micro_batch x grad_accum x dp "
           f"equals {manifest.global_batch}")
    return (f"checkpoint {manifest.tag} trained with a global batch of {manifest.global_batch} "
            f"sequences{how}, the run has {layout.global_batch} (micro_batch {layout.micro_batch}"
            f" x grad_accum {layout.grad_accum} x dp {layout.dp}): the data position and the "
            f"schedule count that batch; {fix}, or start a new run")
