"""Checkpoint bookkeeping around DeepSpeed's save_checkpoint/load_checkpoint.

DeepSpeed writes `latest` from rank 0 as soon as rank 0's own files are saved, while other ranks may
still be writing: a crash then leaves `latest` pointing at a broken checkpoint. Here every rank saves
with save_latest=False, all ranks meet at a barrier, and only then does rank 0 write a completion
marker into the tag directory and atomically replace `latest`. Loading trusts only tags with a
marker, newest first; older complete tags beyond `keep` are deleted.

The marker records the layout, the engine and the global batch. DeepSpeed's own files load only
into the same data-, pipeline- and tensor-parallel degrees, ZeRO stage, offload and engine
(LAYOUT_STATE_KEYS); any other layout resumes from the layout-free state saved beside them
(canonical.py).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from llmlaunch.atomic import write_text_atomic

MARKER = "llmlaunch_complete.json"
LATEST = "latest"
TAG_PATTERN = re.compile(r"^step(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from as configured."""


def tag_for_step(step: int) -> str:
    return f"step{step:08d}"


def step_of(tag: str) -> int | None:
    match = TAG_PATTERN.match(tag)
    return int(match.group(1)) if match else None


def mark_complete(ckpt_dir: Path, tag: str, record: dict) -> None:
    """Rank 0, after every rank saved `tag`: the marker, then `latest` (both atomic renames)."""
    write_text_atomic(ckpt_dir / tag / MARKER, json.dumps(record, indent=2) + "\n")
    write_text_atomic(ckpt_dir / LATEST, tag)


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags with a completion marker, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir()
            if p.is_dir() and step_of(p.name) is not None and (p / MARKER).is_file()]
    return sorted(tags, key=step_of)


def latest_good(ckpt_dir: Path) -> tuple[str, dict] | None:
    """The newest complete checkpoint (tag, marker record), or None. `latest` is preferred when it
    names a complete tag; otherwise the newest marked tag (a crash between marker and `latest`)."""
    tags = complete_tags(ckpt_dir)
    if not tags:
        return None
    named = (ckpt_dir / LATEST).read_text().strip() if (ckpt_dir / LATEST).is_file() else ""
    tag = named if named in tags and step_of(named) >= step_of(tags[-1]) else tags[-1]
    return tag, json.loads((ckpt_dir / tag / MARKER).read_text())


# What DeepSpeed's checkpoint files depend on, besides the engine (micro-batch, accumulation and
# recompute do not change them).
LAYOUT_STATE_KEYS = ("dp", "pp", "tp", "zero_stage", "offload")


def checkpoint_state_layout(record: dict) -> dict:
    """The layout and engine a checkpoint's DeepSpeed files were written for (llmlaunch 0.1's
    markers lack the engine and offload: the pipeline engine, no offload)."""
    saved = record.get("layout", {})
    out = {k: saved.get(k) for k in LAYOUT_STATE_KEYS}
    out["offload"] = out["offload"] or "none"
    out["zero_stage"] = out["zero_stage"] if out["zero_stage"] is not None else 0
    out["engine"] = record.get("engine", "pipeline")
    return out


def same_state_layout(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in (*LAYOUT_STATE_KEYS, "engine"))


def describe_state(state: dict) -> str:
    """'dp=2 pp=2 tp=1, ZeRO-1, pipeline engine' (offload when there is one)."""
    off = f", offload {state['offload']}" if state.get("offload", "none") != "none" else ""
    return (f"dp={state['dp']} pp={state['pp']} tp={state['tp']}, ZeRO-{state['zero_stage']}{off}, "
            f"{state['engine']} engine")


def check_layout(record: dict, layout: dict) -> None:
    """The checkpoint's dp/pp/tp must equal the run's (the refusal of checkpoint.reshard: never)."""
    saved = {k: record.get("layout", {}).get(k) for k in ("dp", "pp", "tp")}
    wanted = {k: layout[k] for k in ("dp", "pp", "tp")}
    if saved != wanted:
        raise CheckpointError(
            f"checkpoint {record.get('tag')} was written with dp={saved['dp']} pp={saved['pp']} "
            f"tp={saved['tp']} but the run uses dp={wanted['dp']} pp={wanted['pp']} tp={wanted['tp']}")


def all_parameters_of_model(config) -> list[tuple[str, tuple]]:
    """(canonical name, full shape) of every parameter of the run's model."""
    from llmlaunch.model.sharding import canonical_shapes

    return list(canonical_shapes(config.model_spec()).items())


def set_schedule_position(engine, step: int, global_batch: int) -> None:
    """After a moved checkpoint: the LR schedule and the engine's counters at `step` (DeepSpeed's
    own load restores these from its files)."""
    scheduler = engine.lr_scheduler
    if scheduler is not None:
        scheduler.last_epoch = step - 1
        scheduler.step()            # sets every group's lr for step `step` + 1
    engine.global_steps = step
    engine.global_samples = step * global_batch


def prune(ckpt_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` complete tags, and incomplete tags older than the newest
    complete one (a crashed save). Returns the deleted tags."""
    tags = complete_tags(ckpt_dir)
    doomed = tags[:-keep] if keep > 0 else []
    newest = step_of(tags[-1]) if tags else None
    if newest is not None:
        for p in ckpt_dir.iterdir():
            s = step_of(p.name)
            if p.is_dir() and s is not None and s < newest and not (p / MARKER).is_file():
                doomed.append(p.name)
    for tag in doomed:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    return doomed
