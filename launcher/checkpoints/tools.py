"""Checkpoints offline, in one process: inspect, convert to another layout, export to Hugging Face,
and what `plan --from-checkpoint` takes from a tag.

- inspect: every tag with its step, layout, ZeRO stage, engine, size, whether it is complete (its
  manifest written) and movable (layout-free state), and with `verify` whether every file matches
  its checksum, or the file and why not.
- convert: a tag's layout-free state re-sliced for another tensor-parallel degree, one tensor at a
  time (peak memory about one tensor's fp32 state, not the model's), written as a checkpoint
  directory a run of the target layout resumes from.
- export: a tag of any layout and engine to a Hugging Face directory (its fp32 master weights;
  llmlaunch 0.1 tags: DeepSpeed's weight files).
Both writers verify their source first, refuse a destination that is, contains or lies inside it
(`check_destination`: --force would delete the source), and write the destination whole or not at
all, with the umask's permissions.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

from llmlaunch.atomic import atomic_directory, write_atomic

from .canonical import CanonicalReader, tensor_file
from .digest import HashingWriter
from .manifest import LEGACY_MARKER, MANIFEST, Manifest, write_manifest
from .space import directory_bytes, human_bytes
from .tags import LATEST, TRUSTED, read_pointer, step_of, tag_dirs, write_pointer
from .verify import Choice, choose, read_or_problem, verify_tag


def _stderr(line: str) -> None:
    print(f"llmlaunch: {line}", file=sys.stderr)


def inspect(ckpt_dir: str | Path, verify: bool = False) -> dict:
    """{dir, latest, trusted, tags: [{tag, step, complete, movable, checksums, verified, problem,
    layout, zero_stage, offload, engine, global_batch, size_bytes}]} of a checkpoint directory.
    verified: True/False after checking every file (verify), else None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise ValueError(f"checkpoint directory {str(ckpt_dir)!r} does not exist")
    from .checks import state_layout

    tags = []
    for tag_dir in tag_dirs(ckpt_dir):
        manifest, problem = (verify_tag(tag_dir) if verify else read_or_problem(tag_dir))
        entry = {"tag": tag_dir.name, "step": step_of(tag_dir.name),
                 "complete": manifest is not None, "size_bytes": directory_bytes(tag_dir),
                 "checksums": manifest is not None and manifest.files is not None,
                 "verified": (problem is None and manifest is not None
                              and manifest.files is not None) if verify else None,
                 "problem": (("incomplete: " if problem.incomplete else "") + problem.describe()
                             if problem else None)}
        if manifest is not None:
            state = state_layout(manifest)
            entry.update({"layout": {**{k: state[k] for k in ("dp", "pp", "tp")},
                                     "ep": (manifest.layout or {}).get("ep", 1)},
                          "zero_stage": state["zero_stage"], "offload": state["offload"],
                          "engine": state["engine"], "global_batch": manifest.global_batch,
                          "kind": manifest.kind})
        entry["movable"] = (manifest is not None and manifest.tensors is not None
                            and (problem is None or not verify))
        tags.append(entry)
    return {"dir": str(ckpt_dir.resolve()), "latest": read_pointer(ckpt_dir, LATEST)[0],
            "trusted": read_pointer(ckpt_dir, TRUSTED)[0], "tags": tags}


def format_inspect(report: dict) -> str:
    from tabulate import tabulate

    verified = any(t["verified"] is not None for t in report["tags"])
    rows = []
    for t in report["tags"]:
        lay = t.get("layout")
        row = [t["tag"], t["step"], "yes" if t["complete"] else "NO"]
        if verified:
            row.append(_verdict(t))
        row += ["yes" if t["movable"] else "no",
                (f"dp {lay['dp']} x pp {lay['pp']} x tp {lay['tp']}"
                 + (f" (ep {lay['ep']})" if lay.get("ep", 1) > 1 else "")) if lay else "",
                t.get("zero_stage", ""), t.get("engine", ""), human_bytes(t["size_bytes"])]
        rows.append(row)
    headers = ["tag", "step", "complete", *(["verified"] if verified else []), "movable", "layout",
               "zero", "engine", "size"]
    notes = [f"  {t['tag']}: {t['problem']}" for t in report["tags"] if t["problem"]]
    head = (f"{report['dir']} (latest: {report['latest'] or 'none'}, trusted: "
            f"{report['trusted'] or 'none'})")
    return "\n".join([head, tabulate(rows, headers=headers, tablefmt="simple"), *notes]) + "\n"


def _verdict(entry: dict) -> str:
    if entry["verified"]:
        return "yes"
    if entry["problem"] and entry["problem"].startswith("incomplete"):
        return "no"
    if entry["problem"]:
        return "CORRUPT"
    return "no checksums"


def resolve_tag(path: str | Path, say=_stderr, files: bool = True) -> Choice:
    """A tag directory (it must verify), or a checkpoint directory (its newest tag that verifies,
    the newer ones passed over said through `say`). ValueError naming the file and why.
    files=False: only the manifest is read (planning reads no state)."""
    path = Path(path)
    if step_of(path.name) is not None or (path / MANIFEST).exists() or (path / LEGACY_MARKER).exists():
        manifest, problem = verify_tag(path, files=files)
        if problem is not None:
            kind = "is not complete" if problem.incomplete else "failed verification"
            raise ValueError(f"checkpoint {str(path)!r} {kind} ({problem.describe()}); use an "
                             "earlier tag (`llmlaunch checkpoint inspect --verify` lists them)")
        choice = Choice(path, manifest)
    else:
        choice = choose(path, files=files) if path.is_dir() else None
        if choice is None:
            raise ValueError(f"{str(path)!r} holds no complete checkpoint (no tag with a "
                             f"{MANIFEST}; `llmlaunch checkpoint inspect` lists what is there)")
    for line in choice.lines():
        say(line)
    return choice


def check_destination(src_tag: Path, dst: str | Path) -> None:
    """Refuse a destination that is the source tag, is or contains its checkpoint directory (the
    run directory holding it, say), or lies inside it: with --force, writing it would delete the
    checkpoint being read. Nothing is touched before this check."""
    tag = Path(src_tag).resolve()
    ckpt = tag.parent
    target = Path(dst).resolve()
    if target == tag:
        relation, what = "is", f"the source tag {tag}"
    elif target == ckpt:
        relation, what = "is", f"the source checkpoint directory {ckpt}"
    elif ckpt.is_relative_to(target):
        relation, what = "contains", f"the source checkpoint directory {ckpt}"
    elif target.is_relative_to(ckpt):
        relation, what = "is inside", f"the source checkpoint directory {ckpt}"
    else:
        return
    raise ValueError(f"destination {str(dst)!r} {relation} {what}: writing it would delete the "
                     f"checkpoint being read; choose a destination outside {ckpt}")


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


def convert(src: str | Path, layout: dict, dst: str | Path, force: bool = False,
            say=_stderr) -> Path:
    """Write DST/<tag>/ (with its manifest) and DST/latest: the source tag's state re-sliced for
    `layout`, one tensor at a time. Returns the tag directory written."""
    from llmlaunch.topology.layout import Layout

    choice = resolve_tag(src, say)
    check_destination(choice.tag_dir, dst)
    reader = CanonicalReader(choice.tag_dir, choice.manifest)   # refuses a 0.1 tag
    target = Layout(dp=layout["dp"], pp=layout["pp"], tp=layout["tp"])
    target.check_model(reader.spec)
    source = choice.manifest
    with atomic_directory(dst, force=force) as tmp:
        out_tag = tmp / choice.tag_dir.name
        files = {}
        for name in reader.tensors:      # one tensor, one target rank, one state at a time
            for rank in range(target.tp):
                piece = reader.slice_for(name, rank, target.tp)
                path = tensor_file(out_tag, name, rank)
                path.parent.mkdir(parents=True, exist_ok=True)
                hashed = []
                write_atomic(path, functools.partial(_save_hashed, piece, hashed))
                files[str(path.relative_to(out_tag))] = hashed[0].record()
                del piece
            release_freed_memory()
        manifest = Manifest(**{**source.__dict__, "layout": {**source.layout, **layout},
                               "engine": "none", "tp": target.tp, "files": dict(sorted(files.items())),
                               "kind": "manifest", "converted_from": str(choice.tag_dir)})
        write_manifest(out_tag, manifest)
        write_pointer(tmp, LATEST, out_tag.name)
    return Path(dst) / choice.tag_dir.name


def _save_hashed(obj, hashed: list, file) -> None:
    import torch

    hashed.append(HashingWriter(file))
    torch.save(obj, hashed[0])


def export_hf(src: str | Path, out_dir: str | Path, force: bool = False, tokenizer=None,
              say=_stderr) -> Path:
    """A Hugging Face directory from a tag of any layout and engine."""
    from llmlaunch.model.hf_export import read_checkpoint_canonical, save_hf

    choice = resolve_tag(src, say)
    check_destination(choice.tag_dir, out_dir)
    if Path(out_dir).exists() and not force:
        raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
    if choice.manifest.tensors is not None:
        reader = CanonicalReader(choice.tag_dir, choice.manifest)
        spec = reader.spec
        canonical = {name: reader.full(name)["param"] for name in reader.tensors}
    else:   # llmlaunch 0.1: a pipeline checkpoint's weight files, the model from its run.yaml
        spec = _spec_of_old_checkpoint(choice.tag_dir, choice.manifest)
        canonical = read_checkpoint_canonical(choice.tag_dir, spec)
    with atomic_directory(out_dir, force=force) as tmp:
        save_hf(spec, canonical, tmp, tokenizer)
    return Path(out_dir)


def _spec_of_old_checkpoint(tag_dir: Path, manifest: Manifest):
    from llmlaunch.config import load_run_dir_config
    from llmlaunch.topology.model_spec import ModelSpec

    if manifest.model is not None:
        return ModelSpec(**manifest.model)
    run_dir = tag_dir.parent.parent
    try:
        return load_run_dir_config(run_dir).model_spec()
    except ValueError:
        raise ValueError(f"{tag_dir} does not say its model and {run_dir} has no run.yaml: "
                         "export it from its run directory") from None


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


def resume_source(ckpt_dir: str | Path, say=_stderr) -> ResumeSource:
    """ResumeSource of a checkpoint directory (a run's checkpoints/ folder) or one of its tags:
    its newest complete tag, which must hold layout-free state. Only manifests are read: planning
    a 70B run's next layout should not hash 0.8 TB (the run verifies the tag when it resumes)."""
    from llmlaunch.config import ConfigError, load_run_dir_config
    from llmlaunch.topology.model_spec import ModelSpec

    choice = resolve_tag(ckpt_dir, say, files=False)
    manifest = choice.manifest
    if manifest.tensors is None or manifest.model is None:
        raise ValueError(f"checkpoint {str(choice.tag_dir)!r} was written by llmlaunch 0.1: it "
                         "holds no layout-free state and cannot move to another layout")
    if not manifest.global_batch:
        raise ValueError(f"checkpoint {str(choice.tag_dir)!r} does not record its global batch")
    run_dir = choice.tag_dir.parent.parent
    try:
        config, source = load_run_dir_config(run_dir), str(run_dir)
    except ConfigError as exc:
        config, source = None, str(exc)
    return ResumeSource(ckpt_dir=choice.tag_dir.parent.resolve(), tag=manifest.tag,
                        step=manifest.step, spec=ModelSpec(**manifest.model),
                        global_batch=int(manifest.global_batch), config=config,
                        config_source=source)
