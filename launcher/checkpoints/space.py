"""What a checkpoint tag takes on disk, sizes a person reads, and a full disk named.

A tag holds, for every canonical tensor and TP slice, one torch.save file of its fp32 weight and
both Adam moments, and the manifest. Its size, an estimate that errs high (tests/torch/
test_checkpoint_store.py and the fault tests compare it with tags written):

    bytes(tag) = sum over files of [ 12 * numel(slice) + container + 4 * 64 ] + bytes(manifest)

12 bytes per element: three fp32 tensors. `container`: torch.save's zip records around them,
measured by serialising three empty fp32 tensors (1,889 bytes with torch 2.13). 4 * 64: torch
aligns each record's data to 64 bytes, and the offsets of the four records after the first tensor
move with the tensors' sizes. The manifest is formatted as it will be written (its digests are
fixed-width).
"""
from __future__ import annotations

import errno
import functools
import shutil
from pathlib import Path

from .manifest import Manifest, tensor_path

ALIGNMENT_BYTES = 64
MOVING_RECORDS = 4
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def human_bytes(count: float) -> str:
    """'8.7 MiB', '1.25 GiB', '512 B': binary units, three significant figures."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= size:
            value = count / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    return f"{count:.0f} B"


@functools.lru_cache(maxsize=1)
def container_bytes() -> int:
    """torch.save's bytes around a file's three tensors (module docstring), measured."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({key: torch.zeros(0) for key in ("param", "exp_avg", "exp_avg_sq")}, buffer)
    return len(buffer.getvalue())


def slice_numel(spec, name: str, shape: tuple, tp: int) -> int:
    """Elements of one TP slice of canonical tensor `name` (vocabularies padded as
    model/sharding.py pads them)."""
    import math

    from llmlaunch.model.sharding import tp_split
    from llmlaunch.topology.params import padded_vocab

    split = tp_split(spec, name)
    full = math.prod(shape)
    if split is None:
        return full
    if split.vocab:
        return padded_vocab(split.vocab, tp) // tp * (full // shape[split.dim])
    return full // tp


def tag_bytes(spec, tp: int, layout: dict | None = None) -> int:
    """The bytes of one tag of this model written at TP degree `tp` (module docstring)."""
    from llmlaunch.model.sharding import canonical_shapes

    per_file = container_bytes() + MOVING_RECORDS * ALIGNMENT_BYTES
    shapes = canonical_shapes(spec)
    files, total = {}, 0
    for name, shape in shapes.items():
        for rank in range(tp):
            size = 12 * slice_numel(spec, name, shape, tp) + per_file
            files[tensor_path(name, rank)] = {"bytes": size, "sha256": "0" * 64}
            total += size
    manifest = Manifest(tag="step00000000", step=10**8, layout=layout or {}, engine="pipeline",
                        model=spec.to_dict(), global_batch=10**6, consumed_samples=10**14,
                        adam_steps=10**8, tp=tp, tensors=sorted(shapes), files=files,
                        schedule={"lr": 0.0, "min_lr": 0.0, "warmup_steps": 0, "steps": 0,
                                  "restart_step": 0, "restart_lr": 0.0})
    return total + len(manifest.to_json().encode())


def directory_bytes(path: Path) -> int:
    total = 0
    for file in Path(path).rglob("*"):
        try:
            if file.is_file():
                total += file.stat().st_size
        except OSError:
            pass
    return total


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind an exception (torch.save reports a failed write as a RuntimeError whose
    context is the OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    error = os_error_of(exc)
    return error is not None and error.errno in NO_SPACE


def free_bytes(path: Path) -> int:
    """Free bytes for an unprivileged writer on the file system holding `path` (or its nearest
    existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free
