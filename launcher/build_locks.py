"""Stale build locks of PyTorch's JIT-compiled extensions (DeepSpeed's ops).

`deepspeed.initialize` loads ops such as fused_adam through `torch.utils.cpp_extension.load`, which
takes a lock file in the op's build directory (`<TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions>/<python>_<device>/<op>/lock`) on every load, even when the op is already
built, and waits for it without a time limit. A process killed while holding it (a job cancelled
during the first start) leaves the file behind, and every later run then waits forever in
`FileBaton.wait`. Ranks check before initialising: a lock older than STALE_AFTER_S, far longer than
any op's build (fused_adam builds in about 40 s on 2 cores), ends the run with an error naming the
file. llmlaunch never deletes it: a build on another node sharing the directory may own it.
"""
from __future__ import annotations

import time
from pathlib import Path

STALE_AFTER_S = 600.0


def extension_build_root() -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def stale_build_locks(root: Path, now: float | None = None,
                      max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Lock files under root (an extensions root: <root>/<tag>/<op>/lock, or <root>/<op>/lock) older
    than max_age_s."""
    now = time.time() if now is None else now
    stale = []
    for lock in sorted([*root.glob("*/lock"), *root.glob("*/*/lock")]):
        try:
            if now - lock.stat().st_mtime > max_age_s:
                stale.append(lock)
        except FileNotFoundError:     # released while we looked
            continue
    return stale


def check_build_locks(root: Path | None = None) -> None:
    """Raise RuntimeError when a stale build lock would make deepspeed.initialize wait forever."""
    root = extension_build_root() if root is None else root
    stale = stale_build_locks(root)
    if stale:
        age_min = (time.time() - stale[0].stat().st_mtime) / 60
        raise RuntimeError(
            f"stale PyTorch extension build lock {stale[0]} ({age_min:.0f} min old; a build killed "
            f"while holding it): DeepSpeed would wait for it forever. Remove it (rm {stale[0]}) "
            f"when no build is running{' (' + str(len(stale) - 1) + ' more)' if len(stale) > 1 else ''}")
