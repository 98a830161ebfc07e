"""Checkpoint tags written without ranks, for the torch tier: random fp32 weights and Adam moments
per canonical tensor, sliced for the writing layout's TP degree, written by the store's own writer
and manifest code (launcher/checkpoints/save.py) in one process, or in the format of llmlaunch 0.2
(marker and canonical/meta.json, no checksums)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from llmlaunch.launcher.checkpoints.comm import Comm
from llmlaunch.launcher.checkpoints.digest import file_record
from llmlaunch.launcher.checkpoints.manifest import (LEGACY_MARKER, LEGACY_META, MANIFEST, Manifest,
                                                     read_manifest, tensor_path, write_manifest)
from llmlaunch.launcher.checkpoints.save import PendingSave, ShareWriter
from llmlaunch.launcher.checkpoints.tags import LATEST, tag_for_step
from llmlaunch.model.sharding import canonical_shapes, shard_tensor, tp_split


def full_state(spec, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {name: {key: torch.randn(shape, generator=g) for key in ("param", "exp_avg", "exp_avg_sq")}
            for name, shape in canonical_shapes(spec).items()}


def share_of(spec, state: dict, tp: int) -> list[tuple[str, dict]]:
    """Every file of a tag written at TP degree `tp`: [(path in the tag, state slice)]."""
    out = []
    for name, tensors in state.items():
        split = tp_split(spec, name)
        for rank in range(tp):
            out.append((tensor_path(name, rank),
                        {k: shard_tensor(v, split, rank, tp).clone() for k, v in tensors.items()}))
    return out


def write_tag(ckpt_dir: Path, step: int, layout: dict, state: dict, spec, global_batch: int,
              complete: bool = True, legacy: bool = False) -> Path:
    """A tag as `llmlaunch train` writes it (its layout-free state and manifest); complete=False:
    the files without the manifest (a save that did not finish); legacy: llmlaunch 0.2's format."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for_step(step)
    tp = layout["tp"]
    record_layout = {"micro_batch": 2, "grad_accum": 2, "zero_stage": 1, **layout}
    draft = Manifest(tag=tag, step=step, layout=record_layout, engine="pipeline",
                     model=spec.to_dict(), global_batch=global_batch,
                     consumed_samples=step * global_batch, adam_steps=step, tp=tp,
                     tensors=sorted(state), schedule=None, files=None)
    share = share_of(spec, state, tp)
    if legacy:
        return _write_legacy(ckpt_dir, draft, share, complete)
    writer = ShareWriter(ckpt_dir / tag, share, background=True)
    pending = PendingSave(ckpt_dir, draft, writer, stall_s=0.0, spec=spec)
    if complete:
        pending.settle(Comm(), wait=True)
    else:
        writer.join()
    return ckpt_dir / tag


def _write_legacy(ckpt_dir: Path, draft: Manifest, share: list, complete: bool) -> Path:
    tag_dir = ckpt_dir / draft.tag
    for path, state in share:
        (tag_dir / path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tag_dir / path)
    write_legacy_records(tag_dir, draft, complete)
    if complete:
        (ckpt_dir / LATEST).write_text(draft.tag)
    return tag_dir


def write_legacy_records(tag_dir: Path, manifest: Manifest, complete: bool = True) -> None:
    """llmlaunch 0.2's records of a tag (canonical/meta.json, then the marker) for `manifest`."""
    (tag_dir / LEGACY_META).write_text(json.dumps({
        "format": "llmlaunch-canonical-1", "step": manifest.step, "adam_steps": manifest.adam_steps,
        "engine": manifest.engine, "layout": manifest.layout, "model": manifest.model,
        "tensors": manifest.tensors, "tp": manifest.tp, "files": manifest.canonical_files()}))
    if complete:
        (tag_dir / LEGACY_MARKER).write_text(json.dumps({
            "tag": manifest.tag, "step": manifest.step, "layout": manifest.layout,
            "engine": manifest.engine, "global_batch": manifest.global_batch,
            "consumed_samples": manifest.consumed_samples, "model": manifest.model}))


def make_legacy(tag_dir: Path) -> None:
    """A tag written by this release turned into what llmlaunch 0.2 wrote: the same state files,
    the marker and meta instead of the manifest (no checksums)."""
    manifest = read_manifest(tag_dir)
    write_legacy_records(tag_dir, manifest)
    (tag_dir / MANIFEST).unlink()


def resign(tag_dir: Path) -> None:
    """Rewrite a tag's checksums for its files as they are now: a change made before the save's
    hashing (memory, a diverging run), which verification cannot see."""
    manifest = read_manifest(tag_dir)
    manifest.files = {name: file_record(tag_dir / name) for name in manifest.files}
    write_manifest(tag_dir, manifest)


STATE_RECORDS = {"param": 0, "exp_avg": 1, "exp_avg_sq": 2}


def flip_bit_in_tensor(path: Path, key: str, fraction: float = 0.5, bit: int = 3) -> None:
    """Flip one bit inside the data of one tensor of a canonical file: torch.save's zip record
    archive/data/N (N: the tensor's place in {param, exp_avg, exp_avg_sq})."""
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist()
                    if i.filename.endswith(f"/data/{STATE_RECORDS[key]}"))
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + int(info.file_size * fraction)] ^= 1 << bit
    path.write_bytes(data)


def flip_bit(path: Path, offset_fraction: float = 0.6, bit: int = 2) -> None:
    """One bit of a file flipped (inside its tensor data, for a large enough file)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 1 << bit
    path.write_bytes(data)


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep_fraction)])


def file_listing(root: Path) -> dict[str, bytes]:
    """{relative path: content} of every file below root: what 'deleted nothing' compares."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file()}
