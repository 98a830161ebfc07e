"""Which tag a run resumes from: the newest whose manifest reads and whose every file is there with
the size and SHA-256 its manifest recorded, checked by all ranks together (rank r hashes the
files r, r + world, ...). A tag that fails is passed over with one line naming it, the file and
why; tags written before checksums existed are used as they are, said once.

What counts as failing: no manifest (a save that did not finish), a torn manifest or marker (not
UTF-8, not JSON), a file missing, of another size (truncated), or with another digest (a flipped
bit, an overwrite). A torn `latest` pointer is named and ignored: the newest verified tag wins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .checks import CheckpointError
from .comm import Comm
from .digest import file_problem
from .manifest import Manifest, TagProblem, read_manifest
from .tags import LATEST, read_pointer, tag_dirs


@dataclass
class Rejected:
    tag: str
    file: str | None
    why: str
    incomplete: bool = False
    """No manifest: a save that never finished (not damage)."""

    def describe(self) -> str:
        return f"{self.file}: {self.why}" if self.file else self.why


@dataclass
class Choice:
    tag_dir: Path
    manifest: Manifest
    rejected: list[Rejected] = field(default_factory=list)
    """Newer tags passed over, newest first."""
    pointer_problem: str | None = None

    def lines(self) -> list[str]:
        """What rank 0 logs: one line per tag passed over, and the legacy notice."""
        tag = self.manifest.tag
        out = [f"{self.pointer_problem}: ignored, the newest verified tag is {tag}"] \
            if self.pointer_problem else []
        for r in self.rejected:
            kind = "is incomplete" if r.incomplete else "failed verification"
            out.append(f"checkpoint {r.tag} {kind} ({r.describe()}); resuming from {tag}, "
                       f"the newest verified tag")
        if self.manifest.files is None:
            out.append(f"checkpoint {tag} was written by {self.manifest.describe_kind()}: its "
                       "files carry no checksums and are used as they are")
        return out


def read_or_problem(tag_dir: Path) -> tuple[Manifest | None, Rejected | None]:
    """The tag's manifest, checked against itself (every canonical file listed), or why not."""
    try:
        manifest = read_manifest(tag_dir)
    except TagProblem as exc:
        return None, Rejected(exc.tag, exc.file, exc.why, incomplete=exc.file is None)
    if manifest.files is not None:
        unlisted = sorted(set(manifest.canonical_files()) - set(manifest.files))
        if unlisted:
            return None, Rejected(manifest.tag, "manifest.json",
                                  f"lists no checksum for {unlisted[0]} ({len(unlisted)} files)")
    return manifest, None


def share_problem(tag_dir: Path, manifest: Manifest, rank: int, world: int):
    """(file, why) of the first bad file among this rank's share of the tag, or None."""
    for index, name in enumerate(sorted(manifest.files)):
        if index % world == rank:
            why = file_problem(tag_dir, name, manifest.files[name])
            if why is not None:
                return name, why.split(": ", 1)[1]
    return None


def legacy_problem(tag_dir: Path, manifest: Manifest):
    """(file, why) of a 0.2 tag's first missing or empty canonical file, or None (no checksums to
    compare: presence is what can be checked)."""
    for name in manifest.canonical_files():
        path = Path(tag_dir) / name
        if not path.is_file():
            return name, "missing"
        if path.stat().st_size == 0:
            return name, "empty"
    return None


def verify_tag(tag_dir: Path, comm: Comm | None = None,
               files: bool = True) -> tuple[Manifest | None, Rejected | None]:
    """(manifest, None) when the tag verifies, (manifest or None, why) when it does not.
    Collective when `comm` spans ranks: every rank must call it for the same tag. files=False:
    the manifest only (what planning needs; no file is read)."""
    comm = comm or Comm()
    manifest, rejected = comm.from_first(lambda: read_or_problem(tag_dir))
    if rejected is not None or not files:
        return manifest, rejected
    if manifest.files is None:
        found = [comm.from_first(lambda: legacy_problem(tag_dir, manifest))]
    else:
        found = comm.all_gather(share_problem(tag_dir, manifest, comm.rank, comm.world))
    bad = sorted(p for p in found if p is not None)
    if bad:
        return manifest, Rejected(manifest.tag, *bad[0])
    return manifest, None


def choose(ckpt_dir: Path, comm: Comm | None = None, files: bool = True) -> Choice | None:
    """The newest usable tag of a checkpoint directory (None: nothing to resume from). A directory
    holding tags that all fail verification is refused rather than trained over. files=False:
    the newest tag whose manifest reads, no file checked."""
    comm = comm or Comm()
    ckpt_dir = Path(ckpt_dir)
    _, pointer_problem = comm.from_first(lambda: read_pointer(ckpt_dir, LATEST))
    rejected = []
    for tag_dir in reversed(comm.from_first(lambda: tag_dirs(ckpt_dir))):
        manifest, problem = verify_tag(tag_dir, comm, files)
        if problem is None:
            return Choice(tag_dir, manifest, rejected, pointer_problem)
        rejected.append(problem)
    damaged = [r for r in rejected if not r.incomplete]
    if damaged:
        listed = "; ".join(f"{r.tag} ({r.describe()})" for r in damaged)
        raise CheckpointError(f"no checkpoint in {ckpt_dir} can be resumed: {listed}. Move the "
                              "directory away to start afresh, or restore a good tag")
    return None
