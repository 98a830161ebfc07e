"""Writing files so that a reader sees the old content or the new, never half of either."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable


def write_bytes_atomic(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """Write to a temporary file beside `path`, then rename it into place (umask permissions)."""
    write_atomic(path, lambda f: f.write(data), fsync=fsync)


def umask_mode(full: int = 0o777) -> int:
    """`full` less the process's umask: the mode a plain mkdir (0o777) or open (0o666) gives. Read
    from /proc on Linux: setting and restoring the umask would race with another thread (the
    checkpoint writer's) creating files."""
    try:
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)
        os.umask(umask)
    return full & ~umask


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object],
                 fsync: bool = False) -> None:
    """`write(file)` into a temporary file beside `path`, then rename it into place (umask
    permissions): for writers that stream (torch.save) rather than hand over bytes. fsync: the
    data reaches the disk before the rename (what a later record vouches for)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = False) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


@contextmanager
def atomic_directory(target: str | os.PathLike, force: bool = False):
    """Yield a temporary directory; on success it replaces `target` (refusing an existing one
    unless force). On error the temporary directory is removed and target is untouched. The
    directory gets the umask's permissions, as mkdir would give it (mkdtemp's are 0700)."""
    target = Path(target)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, umask_mode())
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
