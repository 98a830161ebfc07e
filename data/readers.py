"""Discovering input files and streaming documents out of them.

Supported inputs (chosen by file name suffix, optionally followed by ``.gz``):

* ``.txt``, ``.text``, ``.md``: plain UTF-8 text.  With ``text_split="blank-line"`` (the default)
  documents are separated by one or more blank (whitespace-only) lines; with ``text_split="file"``
  each file is one document.
* ``.jsonl``, ``.ndjson``: one JSON object per line; the document is the string in ``text_field``.
  Blank lines are skipped.
* ``.parquet``: the string column ``text_field``, read in record batches (needs ``pyarrow``).

A path may be a file, a directory (searched recursively for the suffixes above, hidden entries
skipped, sorted by path) or a glob pattern (``*``, ``?``, ``[...]``, ``**``; matches sorted).
Every problem -- a missing path, an empty or corrupt file, invalid UTF-8, a bad JSON line -- raises
:class:`~llmlaunch.data.errors.DataError` with a one-line message that names the file.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

from .errors import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SPLIT_MODES = ("blank-line", "file")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input file and how to read it."""

    path: Path
    format: str  # "text" | "jsonl" | "parquet"
    gzipped: bool = False


@dataclass
class InputStats:
    """What was read from one input file: bytes on disk, their SHA-256, documents yielded."""

    bytes: int = 0
    documents: int = 0
    sha256: str = ""
    _hash: "hashlib._Hash" = field(default_factory=hashlib.sha256, repr=False)


def detect_format(path: Path) -> InputFile:
    """Return the :class:`InputFile` for ``path`` from its suffix, or raise ``DataError`` if unsupported."""
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[: -len(".gz")]
    for suffixes, fmt in ((TEXT_SUFFIXES, "text"), (JSONL_SUFFIXES, "jsonl"), (PARQUET_SUFFIXES, "parquet")):
        if name.endswith(suffixes):
            if fmt == "parquet" and gzipped:
                break
            return InputFile(path=path, format=fmt, gzipped=gzipped)
    supported = ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)
    raise DataError(f"{path}: unsupported input file type (expected {supported}, text/JSONL optionally .gz)")


def _is_supported(path: Path) -> bool:
    """True if ``path`` has a suffix this module can read."""
    try:
        detect_format(path)
    except DataError:
        return False
    return True


def _files_in_directory(directory: Path) -> list[Path]:
    """Supported files below ``directory``, recursively, hidden entries skipped, sorted by path."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(root) / name
            if not name.startswith(".") and _is_supported(path):
                found.append(path)
    return sorted(found)


def expand_inputs(specs: Iterable[str], *, role: str = "input") -> list[InputFile]:
    """Expand files, directories and glob patterns into a de-duplicated, ordered list of input files.

    Order: the order of ``specs``; inside a directory or glob, sorted by path.  A file named twice is
    read once.  ``role`` ("input" or "eval") only appears in error messages.
    """
    seen: set[str] = set()
    result: list[InputFile] = []
    for spec in specs:
        spec = str(spec)
        if _GLOB_CHARS & set(spec) and not Path(spec).exists():
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
            paths = []
            for match in matches:
                paths.extend(_files_in_directory(match) if match.is_dir() else [match])
            if not paths:
                raise DataError(f"{role} pattern {spec!r} matches no files")
        else:
            path = Path(spec)
            if path.is_dir():
                paths = _files_in_directory(path)
                if not paths:
                    raise DataError(f"{role} directory {path} contains no .txt/.jsonl/.parquet files")
            elif path.exists():
                paths = [path]
            else:
                raise DataError(f"{role} file not found: {path}")
        for path in paths:
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            if not path.is_file():
                raise DataError(f"{role} path is not a regular file: {path}")
            result.append(detect_format(path))
    if not result:
        raise DataError(f"no {role} files given")
    return result


class _HashingReader:
    """A read-only binary stream that feeds every byte it returns into ``stats``."""

    def __init__(self, raw: BinaryIO, stats: InputStats) -> None:
        self._raw = raw
        self._stats = stats

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._stats._hash.update(data)
        self._stats.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True


def _binary_lines(inp: InputFile, stats: InputStats) -> Iterator[bytes]:
    """Yield the raw (decompressed) lines of a text/JSONL input, hashing the bytes on disk."""
    try:
        with open(inp.path, "rb") as raw:
            if inp.gzipped:
                with gzip.GzipFile(fileobj=_HashingReader(raw, stats), mode="rb") as stream:  # type: ignore[arg-type]
                    yield from stream
                rest = raw.read()  # bytes the gzip reader did not need to pull (normally none)
                stats._hash.update(rest)
                stats.bytes += len(rest)
            else:
                for line in raw:
                    stats._hash.update(line)
                    stats.bytes += len(line)
                    yield line
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{inp.path}: corrupt gzip data ({exc or type(exc).__name__})") from None
    except OSError as exc:
        raise DataError(f"{inp.path}: cannot read file ({exc.strerror or exc})") from None


def _decode(line: bytes, inp: InputFile, lineno: int) -> str:
    """Decode one line as strict UTF-8, or raise ``DataError`` naming the file, line and byte."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{inp.path}:{lineno}: invalid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
        ) from None


def _text_documents(inp: InputFile, stats: InputStats, text_split: str) -> Iterator[str]:
    """Documents of a plain-text file: blank-line separated, or the whole file."""
    lines: list[str] = []
    for lineno, raw in enumerate(_binary_lines(inp, stats), start=1):
        line = _decode(raw, inp, lineno)
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]  # byte-order mark
        if text_split == "blank-line" and not line.strip():
            if lines:
                yield "".join(lines)
                lines = []
            continue
        lines.append(line)
    if lines:
        yield "".join(lines)


def _jsonl_documents(inp: InputFile, stats: InputStats, text_field: str) -> Iterator[str]:
    """Documents of a JSON-lines file: the string ``text_field`` of each non-blank line."""
    for lineno, raw in enumerate(_binary_lines(inp, stats), start=1):
        line = _decode(raw, inp, lineno)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{inp.path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{inp.path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if text_field not in record:
            raise DataError(f"{inp.path}:{lineno}: no {text_field!r} field (set --text-field)")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{inp.path}:{lineno}: field {text_field!r} is {type(text).__name__}, not a string")
        yield text


def _file_sha256(path: Path, stats: InputStats) -> None:
    """Hash ``path`` into ``stats`` (used for Parquet, which is not read as a byte stream)."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            stats._hash.update(block)
            stats.bytes += len(block)


def _parquet_documents(inp: InputFile, stats: InputStats, text_field: str) -> Iterator[str]:
    """Documents of a Parquet file: the string column ``text_field``, one record batch at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{inp.path}: reading Parquet needs the 'pyarrow' package, which is not installed") from None
    try:
        parquet = pq.ParquetFile(inp.path)
        names = parquet.schema_arrow.names
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{inp.path}: not a readable Parquet file ({exc})") from None
    if text_field not in names:
        raise DataError(f"{inp.path}: no {text_field!r} column (columns: {', '.join(names)}; set --text-field)")
    _file_sha256(inp.path, stats)
    try:
        for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
            for row, value in enumerate(batch.column(0).to_pylist()):
                if value is None:
                    yield ""
                elif isinstance(value, str):
                    yield value
                else:
                    raise DataError(f"{inp.path}: column {text_field!r} holds {type(value).__name__}, not strings")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{inp.path}: corrupt Parquet data ({exc})") from None


def iter_documents(
    inp: InputFile,
    *,
    text_field: str = "text",
    text_split: str = "blank-line",
    stats: InputStats | None = None,
) -> Iterator[str]:
    """Stream the raw documents of one input file.

    Raises ``DataError`` if the file is empty, unreadable, corrupt or yields no document.  ``stats``
    (if given) receives the byte count, SHA-256 and document count once the file is exhausted.
    """
    if text_split not in TEXT_SPLIT_MODES:
        raise DataError(f"unknown text split mode {text_split!r} (choose from {', '.join(TEXT_SPLIT_MODES)})")
    stats = stats if stats is not None else InputStats()
    try:
        size = inp.path.stat().st_size
    except OSError as exc:
        raise DataError(f"{inp.path}: cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise DataError(f"{inp.path}: input file is empty")
    if inp.format == "text":
        documents = _text_documents(inp, stats, text_split)
    elif inp.format == "jsonl":
        documents = _jsonl_documents(inp, stats, text_field)
    else:
        documents = _parquet_documents(inp, stats, text_field)
    for document in documents:
        stats.documents += 1
        yield document
    if stats.documents == 0:
        raise DataError(f"{inp.path}: input file contains no documents")
    stats.sha256 = stats._hash.hexdigest()


def iter_all_documents(
    inputs: Sequence[InputFile],
    *,
    text_field: str = "text",
    text_split: str = "blank-line",
    stats: dict[Path, InputStats] | None = None,
) -> Iterator[str]:
    """Stream the documents of every input in order; fills ``stats[path]`` per file when given."""
    for inp in inputs:
        file_stats = InputStats()
        if stats is not None:
            stats[inp.path] = file_stats
        yield from iter_documents(inp, text_field=text_field, text_split=text_split, stats=file_stats)
