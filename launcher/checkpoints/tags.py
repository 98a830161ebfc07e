"""A checkpoint directory: one folder per tag, and two pointers beside them.

    CKPT_DIR/step00000040/   one tag per saved step (its files, then manifest.json, written last)
    CKPT_DIR/latest          the newest tag whose manifest was written (DeepSpeed's file name, kept
                             for people and tools; resume does not trust it, it verifies)
    CKPT_DIR/trusted         the newest tag that training continued from with healthy steps
                             (store.py: the pruning rule)

A pointer is one line of UTF-8 text naming a tag. A torn or foreign one (not UTF-8, not a tag name,
a tag that is not there) reads as absent, with the reason.
"""
from __future__ import annotations

import re
from pathlib import Path

from llmlaunch.atomic import write_text_atomic

LATEST = "latest"
TRUSTED = "trusted"
TAG_PATTERN = re.compile(r"^step(\d+)$")


def tag_for_step(step: int) -> str:
    return f"step{step:08d}"


def step_of(tag: str) -> int | None:
    match = TAG_PATTERN.match(tag)
    return int(match.group(1)) if match else None


def tag_dirs(ckpt_dir: Path) -> list[Path]:
    """Every step-named folder of a checkpoint directory, oldest first (none when it is absent)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and step_of(p.name) is not None]
    return sorted(found, key=lambda p: step_of(p.name))


def read_pointer(ckpt_dir: Path, name: str) -> tuple[str | None, str | None]:
    """(tag, None) when CKPT_DIR/name names an existing tag folder, else (None, why not); (None,
    None) when the pointer does not exist."""
    path = Path(ckpt_dir) / name
    if not path.is_file():
        return None, None
    try:
        text = path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, f"{path} is not UTF-8 text (a torn write?)"
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror})"
    if step_of(text) is None:
        return None, f"{path} does not name a tag ({text[:40]!r})"
    if not (Path(ckpt_dir) / text).is_dir():
        return None, f"{path} names {text}, which is not there"
    return text, None


def write_pointer(ckpt_dir: Path, name: str, tag: str) -> None:
    write_text_atomic(Path(ckpt_dir) / name, tag)
