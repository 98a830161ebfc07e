"""Saving a tag without stopping the training loop for the write.

1. `snapshot` (canonical.py), on the training thread: every rank copies its share of the fp32
   state to CPU memory (ZeRO's accessors gather over the data-parallel group). This is the stall.
2. `ShareWriter`, on a thread of its own: torch.save of each file through a hashing writer (the
   digest costs no second read), fsync, rename into place. Training goes on meanwhile; the copies
   are dropped file by file as they are written.
3. `settle`, at a step boundary, collective: while any rank still writes, nothing (one all-reduce
   of a small integer per step); when all are done, every rank's {file: {bytes, sha256}} goes to
   rank 0, which writes the manifest (last, atomically), then `latest`. A rank whose write failed
   fails the save on every rank; a full disk is named with the path, the bytes a tag needs and
   the bytes free, and the partial tag is removed (the previous tag stays the latest).
At most one save is in flight: the next one, the end of training and a stop wait for it.
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from llmlaunch.atomic import write_atomic

from .checks import CheckpointError
from .comm import Comm
from .digest import HashingWriter
from .manifest import Manifest
from .space import free_bytes, human_bytes, is_disk_full, os_error_of, tag_bytes
from .tags import LATEST, read_pointer

RUNNING, DONE, FAILED = 0, 1, -1


class ShareWriter:
    """This rank's share of one tag, written on a background thread (or on the caller's when
    `background` is False), each file hashed as it streams out."""

    def __init__(self, tag_dir: Path, share: list[tuple[str, dict]], background: bool = True):
        self.tag_dir = Path(tag_dir)
        self.share = share
        self.records: dict[str, dict] = {}
        self.error: dict | None = None
        self.seconds = 0.0
        self.thread = None
        if background:
            self.thread = threading.Thread(target=self._run, name="llmlaunch-checkpoint-writer",
                                           daemon=True)
            self.thread.start()
        else:
            self._run()

    def _run(self) -> None:
        import torch

        started = time.perf_counter()
        current = None
        try:
            for index in range(len(self.share)):
                current, state = self.share[index]
                self.share[index] = (current, None)     # the copy goes with the write
                path = self.tag_dir / current
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = []

                def save(file, state=state):
                    writer.append(HashingWriter(file))
                    torch.save(state, writer[0])

                write_atomic(path, save, fsync=True)
                self.records[current] = writer[0].record()
                del state
        except BaseException as exc:  # noqa: BLE001 - reported through settle() on every rank
            error = os_error_of(exc)
            cause = (error.strerror if error is not None and error.strerror
                     else str(exc).strip().splitlines()[0] if str(exc).strip()
                     else type(exc).__name__)
            self.error = {"file": str(self.tag_dir / current) if current else str(self.tag_dir),
                          "disk_full": is_disk_full(exc), "cause": cause}
        finally:
            self.seconds = time.perf_counter() - started

    def status(self) -> int:
        if self.thread is not None and self.thread.is_alive():
            return RUNNING
        return FAILED if self.error else DONE

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


class PendingSave:
    """A tag being written: its draft manifest (everything but the files) and this rank's writer."""

    def __init__(self, ckpt_dir: Path, draft: Manifest, writer: ShareWriter, stall_s: float,
                 spec=None):
        self.ckpt_dir, self.draft, self.writer, self.stall_s = Path(ckpt_dir), draft, writer, stall_s
        self.spec = spec
        self.started = time.perf_counter()

    @property
    def tag_dir(self) -> Path:
        return self.ckpt_dir / self.draft.tag

    def settle(self, comm: Comm, wait: bool) -> Manifest | None:
        """Collective. None while some rank still writes (wait=False); the finished manifest on
        rank 0 (after writing it), a manifest without files elsewhere, once all are done.
        CheckpointError on every rank when a write failed."""
        if wait:
            self.writer.join()
        status = comm.minimum(self.writer.status())
        if status == RUNNING:
            return None
        if status == FAILED:
            self.writer.join()
            raise CheckpointError(self._failure(comm))
        shares = comm.all_gather(self.writer.records)
        if comm.rank != 0:
            return self.draft
        from .manifest import write_manifest
        from .tags import write_pointer

        files = {name: record for share in shares for name, record in share.items()}
        missing = sorted(set(self.draft.canonical_files()) - set(files))
        if missing:
            raise CheckpointError(f"checkpoint {self.draft.tag}: no rank wrote {missing[0]} "
                                  f"({len(missing)} files): the ranks disagree on the model")
        manifest = Manifest(**{**self.draft.__dict__, "files": dict(sorted(files.items()))})
        write_manifest(self.tag_dir, manifest)
        write_pointer(self.ckpt_dir, LATEST, manifest.tag)
        return manifest

    def _failure(self, comm: Comm) -> str:
        """Every rank has stopped writing: rank 0 removes the partial tag and words the failure."""
        errors = [e for e in comm.all_gather(self.writer.error) if e]
        comm.barrier()

        def words() -> str:
            error = next((e for e in errors if e["disk_full"]), errors[0])
            shutil.rmtree(self.tag_dir, ignore_errors=True)
            previous, _ = read_pointer(self.ckpt_dir, LATEST)
            stays = (f"{previous} stays the latest checkpoint" if previous
                     else "there is no earlier checkpoint")
            if error["disk_full"]:
                need = tag_bytes(self.spec, self.draft.tp, self.draft.layout) if self.spec else 0
                return (f"checkpoint {self.draft.tag} not saved: no space left on device writing "
                        f"{error['file']}: a tag needs {human_bytes(need)}, "
                        f"{human_bytes(free_bytes(self.ckpt_dir))} is free on {self.ckpt_dir} "
                        f"(the partial tag removed); {stays}. Free space or set checkpoint.dir "
                        "elsewhere, then run again to resume")
            return (f"checkpoint {self.draft.tag} not saved: writing {error['file']} failed "
                    f"({error['cause']}); the partial tag was removed and {stays}")

        return comm.from_first(words)


def size_summary(manifest: Manifest) -> str:
    total = sum(f["bytes"] for f in (manifest.files or {}).values())
    return f"{len(manifest.files or {})} files, {human_bytes(total)}"
