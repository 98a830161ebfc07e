"""Checkpoint bookkeeping around DeepSpeed's save_checkpoint/load_checkpoint.

DeepSpeed writes `latest` from rank 0 as soon as rank 0's own files are saved, while other ranks may
still be writing: a crash then leaves `latest` pointing at a broken checkpoint. Here every rank saves
with save_latest=False, all ranks meet at a barrier, and only then does rank 0 write a completion
marker into the tag directory and atomically replace `latest`. Loading trusts only tags with a
marker, newest first; older complete tags beyond `keep` are deleted.

The marker records the layout: resuming with a different dp/pp/tp fails with a message that points
at DeepSpeed's universal checkpoint conversion.
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


def check_layout(record: dict, layout: dict) -> None:
    """The checkpoint's dp/pp/tp must equal the run's."""
    saved = {k: record.get("layout", {}).get(k) for k in ("dp", "pp", "tp")}
    wanted = {k: layout[k] for k in ("dp", "pp", "tp")}
    if saved != wanted:
        raise CheckpointError(
            f"checkpoint {record.get('tag')} was written with dp={saved['dp']} pp={saved['pp']} "
            f"tp={saved['tp']} but the run uses dp={wanted['dp']} pp={wanted['pp']} tp={wanted['tp']}; "
            "convert it with DeepSpeed's universal checkpoint (python -m deepspeed.checkpoint."
            "ds_to_universal) to change layout, or restore the original layout")


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
