"""One record per checkpoint tag: TAG/manifest.json, written last and atomically by rank 0 once
every rank's files are on disk. It is the one record llmlaunch reads (docs/checkpoints.md has the
schema):

    format            "llmlaunch-checkpoint-2"
    tag, step         the tag and the optimizer steps it holds
    layout            run.yaml's layout section the tag was written under (dp, pp, tp, micro_batch,
                      grad_accum, zero_stage, offload, recompute)
    engine            the DeepSpeed engine that wrote it: pipeline, plain, or none (convert)
    model             the model shape (ModelSpec.to_dict)
    global_batch, consumed_samples
                      sequences per step, and the data position: sequences trained on so far
    adam_steps        Adam's step count (bias correction)
    schedule          the learning-rate schedule the steps followed (lr_schedule.Schedule)
    tp, tensors       the layout-free state: canonical/NAME/tpR.pt for every tensor NAME and R < tp
    files             {path in the tag: {bytes, sha256}} for every file but the manifest

Tags written before the manifest existed still read, without checksums (`files` None):
- llmlaunch 0.2: llmlaunch_complete.json (the marker) and canonical/meta.json;
- llmlaunch 0.1: the marker and DeepSpeed's own files, no layout-free state (`tensors` None).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from llmlaunch.atomic import write_text_atomic

MANIFEST = "manifest.json"
FORMAT = "llmlaunch-checkpoint-2"
CANONICAL_DIR = "canonical"
LEGACY_MARKER = "llmlaunch_complete.json"
LEGACY_META = f"{CANONICAL_DIR}/meta.json"
LEGACY_META_FORMAT = "llmlaunch-canonical-1"


class TagProblem(ValueError):
    """A tag that cannot be used: `file` (a path in the tag, or None) and why."""

    def __init__(self, tag: str, file: str | None, why: str):
        super().__init__(f"checkpoint {tag}: {file + ': ' if file else ''}{why}")
        self.tag, self.file, self.why = tag, file, why


def tensor_path(name: str, tp_rank: int) -> str:
    """A canonical tensor's file, relative to its tag."""
    return f"{CANONICAL_DIR}/{name}/tp{tp_rank}.pt"


@dataclass
class Manifest:
    tag: str
    step: int
    layout: dict
    engine: str
    model: dict | None
    global_batch: int
    consumed_samples: int
    adam_steps: int
    tp: int
    tensors: list[str] | None
    schedule: dict | None
    files: dict | None
    kind: str = "manifest"
    """manifest; legacy (0.2's marker and meta, no checksums); deepspeed (0.1: DeepSpeed's files)."""
    converted_from: str | None = None

    def canonical_files(self) -> list[str]:
        return [tensor_path(n, r) for n in (self.tensors or []) for r in range(self.tp)]

    def to_json(self) -> str:
        record = {"format": FORMAT, **asdict(self)}
        del record["kind"]
        return json.dumps(record, indent=1, sort_keys=False) + "\n"

    def describe_kind(self) -> str:
        return {"manifest": "verified by checksums", "legacy": "llmlaunch 0.2, no checksums",
                "deepspeed": "llmlaunch 0.1, DeepSpeed's files only"}[self.kind]


def write_manifest(tag_dir: Path, manifest: Manifest) -> None:
    write_text_atomic(Path(tag_dir) / MANIFEST, manifest.to_json(), fsync=True)


def _json_of(tag: str, path: Path, name: str) -> dict:
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise TagProblem(tag, name, "missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TagProblem(tag, name, f"not valid JSON (a torn write?): {exc}") from None
    except OSError as exc:
        raise TagProblem(tag, name, f"cannot be read ({exc.strerror})") from None
    if not isinstance(record, dict):
        raise TagProblem(tag, name, "not a JSON object")
    return record


def read_manifest(tag_dir: Path) -> Manifest:
    """The tag's record; TagProblem naming the file and why when it has none or it is torn."""
    tag_dir = Path(tag_dir)
    tag = tag_dir.name
    if (tag_dir / MANIFEST).exists():
        record = _json_of(tag, tag_dir / MANIFEST, MANIFEST)
        if record.pop("format", None) != FORMAT:
            raise TagProblem(tag, MANIFEST, f"not a {FORMAT} manifest")
        try:
            manifest = Manifest(**record)
        except TypeError as exc:
            raise TagProblem(tag, MANIFEST, f"unexpected fields ({exc})") from None
        if manifest.tag != tag:
            raise TagProblem(tag, MANIFEST, f"describes {manifest.tag}, not this tag")
        return manifest
    if (tag_dir / LEGACY_MARKER).exists():
        return _legacy(tag_dir, _json_of(tag, tag_dir / LEGACY_MARKER, LEGACY_MARKER))
    raise TagProblem(tag, None, f"no {MANIFEST}: a save that did not finish")


def _legacy(tag_dir: Path, marker: dict) -> Manifest:
    """A tag of llmlaunch 0.2 (marker and canonical/meta.json) or 0.1 (marker only)."""
    tag = tag_dir.name
    step = int(marker.get("step", 0))
    layout = marker.get("layout", {})
    batch = marker.get("global_batch") or marker.get("consumed_samples", 0) // max(step, 1)
    common = dict(tag=tag, step=step, layout=layout, engine=marker.get("engine", "pipeline"),
                  global_batch=int(batch), consumed_samples=int(marker.get(
                      "consumed_samples", step * batch)), schedule=None, files=None,
                  converted_from=marker.get("converted_from"))
    if not (tag_dir / LEGACY_META).exists():
        return Manifest(**common, model=marker.get("model"), adam_steps=step, tp=layout.get("tp", 1),
                        tensors=None, kind="deepspeed")
    meta = _json_of(tag, tag_dir / LEGACY_META, LEGACY_META)
    if meta.get("format") != LEGACY_META_FORMAT:
        raise TagProblem(tag, LEGACY_META, f"unknown format {meta.get('format')!r}")
    return Manifest(**common, model=meta["model"], adam_steps=int(meta["adam_steps"]),
                    tp=int(meta["tp"]), tensors=sorted(meta["tensors"]), kind="legacy")
