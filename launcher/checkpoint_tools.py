"""Checkpoints offline, in one process: inspect, convert to another layout, export to Hugging Face.

- inspect: every tag of a checkpoint directory with its step, layout, ZeRO stage, engine, size and
  whether it is complete (marker written after every rank saved) and movable (its layout-free state
  is all there).
- convert: a complete tag's layout-free state (canonical.py) re-sliced for another tensor-parallel
  degree, one tensor at a time (peak memory about one tensor's fp32 state, not the model's), written
  as a checkpoint directory a run of the target layout resumes from (it moves it on start: there
  are no DeepSpeed files to load as they are). A torn or partial tag is refused, naming what is
  missing.
- export: a complete tag of any layout and either engine to a Hugging Face directory (its fp32
  master weights; llmlaunch 0.1 pipeline checkpoints without layout-free state: their weight
  files).
"""
from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmlaunch.atomic import atomic_directory, write_atomic, write_text_atomic

from .canonical import (CANONICAL_DIR, META_FILE, CanonicalReader, directory_bytes, missing_files,
                        read_meta, tensor_file)
from .checkpoint import LATEST, MARKER, checkpoint_state_layout, complete_tags, step_of


def _tag_dirs(ckpt_dir: Path) -> list[Path]:
    return sorted((p for p in ckpt_dir.iterdir() if p.is_dir() and step_of(p.name) is not None),
                  key=lambda p: step_of(p.name))


def inspect(ckpt_dir: str | Path) -> dict:
    """{dir, latest, tags: [{tag, step, complete, movable, layout, zero_stage, engine, size_bytes,
    missing}]} of a checkpoint directory (a run's checkpoints/ folder)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise ValueError(f"checkpoint directory {str(ckpt_dir)!r} does not exist")
    tags = []
    complete = set(complete_tags(ckpt_dir))
    for tag_dir in _tag_dirs(ckpt_dir):
        entry = {"tag": tag_dir.name, "step": step_of(tag_dir.name),
                 "complete": tag_dir.name in complete, "size_bytes": directory_bytes(tag_dir)}
        if entry["complete"]:
            record = json.loads((tag_dir / MARKER).read_text())
            state = checkpoint_state_layout(record)
            entry.update({"layout": {k: state[k] for k in ("dp", "pp", "tp")},
                          "zero_stage": state["zero_stage"], "offload": state["offload"],
                          "engine": state["engine"], "global_batch": record.get("global_batch")})
        try:
            entry["missing"] = missing_files(tag_dir, read_meta(tag_dir))
            entry["movable"] = entry["complete"] and not entry["missing"]
        except (FileNotFoundError, ValueError) as exc:
            entry["missing"], entry["movable"] = [str(exc)], False
        tags.append(entry)
    latest = (ckpt_dir / LATEST).read_text().strip() if (ckpt_dir / LATEST).is_file() else None
    return {"dir": str(ckpt_dir.resolve()), "latest": latest, "tags": tags}


def format_inspect(report: dict) -> str:
    from tabulate import tabulate

    rows = []
    for t in report["tags"]:
        lay = t.get("layout")
        rows.append([t["tag"], t["step"], "yes" if t["complete"] else "NO",
                     "yes" if t["movable"] else "no",
                     f"dp {lay['dp']} x pp {lay['pp']} x tp {lay['tp']}" if lay else "",
                     t.get("zero_stage", ""), t.get("engine", ""),
                     f"{t['size_bytes'] / 2**20:,.1f} MiB"])
    table = tabulate(rows, headers=["tag", "step", "complete", "movable", "layout", "zero",
                                    "engine", "size"], tablefmt="simple")
    return f"{report['dir']} (latest: {report['latest'] or 'none'})\n{table}\n"


def resolve_tag(path: str | Path) -> Path:
    """A tag directory, or a checkpoint directory (its newest complete tag). It must be complete
    and movable: ValueError naming what is missing otherwise."""
    path = Path(path)
    if (path / MARKER).is_file() or step_of(path.name) is not None:
        tag_dir = path
    else:
        tags = complete_tags(path) if path.is_dir() else []
        if not tags:
            raise ValueError(f"{str(path)!r} holds no complete checkpoint (no tag with "
                             f"{MARKER}; `llmlaunch checkpoint inspect` lists what is there)")
        tag_dir = path / tags[-1]
    if not (tag_dir / MARKER).is_file():
        raise ValueError(f"checkpoint {str(tag_dir)!r} is not complete (no {MARKER}: a save that "
                         "did not finish); use an earlier tag")
    return tag_dir


def parse_layout(text: str) -> dict:
    """'dp=2,pp=1,tp=4' -> {'dp': 2, 'pp': 1, 'tp': 4}."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in ("dp", "pp", "tp") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--layout {text!r}: expected dp=D,pp=P,tp=T with positive integers")
        out[key] = int(value)
    if set(out) != {"dp", "pp", "tp"}:
        raise ValueError(f"--layout {text!r}: give all of dp, pp and tp")
    return out


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; nothing elsewhere). glibc
    raises its mmap threshold after large blocks are freed, so later tensors of the same size
    come from the heap, and a freed heap stays the process's: without this, convert's peak grows
    with the number of large tensors instead of staying at one tensor's (measured:
    benchmarks/bench_convert.py)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()      # torch.load's memory maps are freed with their storages, some in cycles
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def convert(src: str | Path, layout: dict, dst: str | Path, force: bool = False) -> Path:
    """Write DST/<tag>/ (and DST/latest): the source tag's state re-sliced for `layout`, one
    tensor at a time. Returns the tag directory written."""
    import torch

    from llmlaunch.topology.layout import Layout

    tag_dir = resolve_tag(src)
    reader = CanonicalReader(tag_dir)          # refuses a partial state, naming the first gap
    record = json.loads((tag_dir / MARKER).read_text())
    meta = reader.meta
    target = Layout(dp=layout["dp"], pp=layout["pp"], tp=layout["tp"])
    target.check_model(reader.spec)
    with atomic_directory(dst, force=force) as tmp:
        out_tag = tmp / tag_dir.name
        for name in meta["tensors"]:      # one tensor, one target rank, one state at a time
            for rank in range(target.tp):
                piece = reader.slice_for(name, rank, target.tp)
                path = tensor_file(out_tag, name, rank)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, functools.partial(torch.save, piece))
                del piece
            release_freed_memory()
        new_layout = {**meta["layout"], **layout}
        new_meta = {**meta, "layout": new_layout, "engine": "none", "tp": target.tp,
                    "files": [f"{CANONICAL_DIR}/{n}/tp{r}.pt" for n in meta["tensors"]
                              for r in range(target.tp)], "converted_from": str(tag_dir)}
        write_text_atomic(out_tag / CANONICAL_DIR / META_FILE, json.dumps(new_meta, indent=1) + "\n")
        write_text_atomic(out_tag / MARKER, json.dumps(
            {**record, "layout": {**record.get("layout", {}), **layout}, "engine": "none",
             "converted_from": str(tag_dir)}, indent=2) + "\n")
        write_text_atomic(tmp / LATEST, tag_dir.name)
    return Path(dst) / tag_dir.name


def export_hf(src: str | Path, out_dir: str | Path, force: bool = False, tokenizer=None) -> Path:
    """A Hugging Face directory from a complete checkpoint of any layout and engine."""
    from llmlaunch.model.hf_export import read_checkpoint_canonical, save_hf

    tag_dir = resolve_tag(src)
    record = json.loads((tag_dir / MARKER).read_text())
    if (tag_dir / CANONICAL_DIR / META_FILE).is_file():
        reader = CanonicalReader(tag_dir)
        spec = reader.spec
        canonical = {name: reader.full(name)["param"] for name in reader.meta["tensors"]}
    else:   # llmlaunch 0.1: a pipeline checkpoint's weight files, the model from its run.yaml
        spec = _spec_of_old_checkpoint(tag_dir, record)
        canonical = read_checkpoint_canonical(tag_dir, spec)
    if Path(out_dir).exists() and not force:
        raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
    with atomic_directory(out_dir, force=force) as tmp:
        save_hf(spec, canonical, tmp, tokenizer)
    return Path(out_dir)


def _spec_of_old_checkpoint(tag_dir: Path, record: dict):
    from llmlaunch.config import load_run_dir_config

    if "model" in record:
        from llmlaunch.topology.model_spec import ModelSpec

        return ModelSpec(**record["model"])
    run_dir = tag_dir.parent.parent
    try:
        return load_run_dir_config(run_dir).model_spec()
    except ValueError:
        raise ValueError(f"{tag_dir} does not say its model and {run_dir} has no run.yaml: "
                         "export it from its run directory") from None


def copy_tag(src_tag: Path, dst_dir: Path) -> None:
    """Copy one complete tag into a checkpoint directory and point latest at it (tests, manual
    moves)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src_tag, dst_dir / src_tag.name)
    write_text_atomic(dst_dir / LATEST, src_tag.name)


@dataclass(frozen=True)
class ResumeSource:
    """What `plan --from-checkpoint` takes from a checkpoint: the model, the global batch (a run
    moves between layouts only at the same global batch) and, when the run directory around it
    still holds the config it trained with, that config's train/data/checkpoint settings."""

    ckpt_dir: Path
    tag: str
    step: int
    spec: object
    global_batch: int
    config: object | None     # RunConfig of the source run, or None
    config_source: str        # where config came from, or why it is absent


def resume_source(ckpt_dir: str | Path) -> ResumeSource:
    """ResumeSource of a checkpoint directory (a run's checkpoints/ folder) or one of its tags.
    The checkpoint must be complete and movable."""
    from llmlaunch.config import ConfigError, load_run_dir_config
    from llmlaunch.topology.model_spec import ModelSpec

    tag_dir = resolve_tag(ckpt_dir)
    record = json.loads((tag_dir / MARKER).read_text())
    meta = read_meta(tag_dir)
    missing = missing_files(tag_dir, meta)
    if missing:
        raise ValueError(f"checkpoint {str(tag_dir)!r} is incomplete: {len(missing)} layout-free "
                         f"file(s) missing, first {missing[0]}")
    step = step_of(tag_dir.name)
    batch = record.get("global_batch") or record.get("consumed_samples", 0) // max(step, 1)
    if not batch:
        raise ValueError(f"checkpoint {str(tag_dir)!r} does not record its global batch")
    run_dir = tag_dir.parent.parent
    try:
        config, source = load_run_dir_config(run_dir), str(run_dir)
    except ConfigError as exc:
        config, source = None, str(exc)
    return ResumeSource(ckpt_dir=tag_dir.parent.resolve(), tag=tag_dir.name, step=step,
                        spec=ModelSpec(**meta["model"]), global_batch=int(batch), config=config,
                        config_source=source)
