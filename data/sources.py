"""The token sources a run can read, each one a sequence of documents in one token space.

A source (run.yaml ``data.sources: [{path, weight, split?, name?, column?, dtype?}]``) is one of:

* ``prepared``: a ``llmlaunch data prepare`` directory (its manifest, ``split`` train or val);
* ``megatron``: Megatron-LM's indexed dataset, ``PREFIX`` of ``PREFIX.bin`` + ``PREFIX.idx``
  (data/megatron.py);
* ``datatrove``: datatrove's tokenized output, a ``.ds`` file or a folder of them
  (data/datatrove_format.py);
* ``flat``: a ``.npy`` (1-D uint16/uint32) or raw ``.bin`` token file: one document;
* ``columnar``: a ``.parquet``/``.arrow`` file or a folder of them with a token column (``column``,
  default the first of input_ids, tokens, token_ids, ids), one row a document. Parquet cannot be
  memory-mapped, so the index builder converts it once into a Megatron pair in the index's cache
  (data/columnar.py) and every rank reads that.

Every kind gives the same view: ``documents``, ``tokens``, :meth:`document_ends` (in chunks, for the
index builder) and :meth:`read` (tokens ``[start, start + n)`` of the source's token space, across
its files); ranks open the files as memmaps and load nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .columnar import columnar_files, converted_prefix
from .datatrove_format import DatatroveFile, datatrove_files
from .errors import DataError
from .megatron import MegatronIndex, is_megatron, prefix_of
from .shards import FORMAT_NAME

MANIFEST_FILE = "manifest.json"
KINDS = ("prepared", "megatron", "datatrove", "flat", "columnar")
SOURCE_KEYS = ("path", "weight", "split", "name", "column", "dtype")
CHUNK_DOCUMENTS = 1 << 22


@dataclass(frozen=True)
class SourceSpec:
    """One entry of data.sources (paths already resolved against the run directory)."""

    path: str
    weight: float = 1.0
    split: str = "train"
    name: str = ""
    column: str = ""
    dtype: str = ""

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


@dataclass
class TokenFile:
    """One file of a source's token space: its tokens and where they sit in that space."""

    path: Path
    dtype: np.dtype
    tokens: int
    first_token: int = 0
    _array: np.ndarray | None = field(default=None, repr=False)

    def array(self) -> np.ndarray:
        if self._array is None:
            if self.path.suffix == ".npy":
                self._array = np.load(self.path, mmap_mode="r")
            else:
                self._array = np.memmap(self.path, self.dtype, "r", shape=(self.tokens,))
        return self._array


def detect_kind(path: Path) -> str:
    """Which kind of source `path` is (DataError naming what would work)."""
    if path.is_dir() and (path / MANIFEST_FILE).is_file() or path.name == MANIFEST_FILE:
        return "prepared"
    if is_megatron(path):
        return "megatron"
    if datatrove_files(path):
        return "datatrove"
    if path.is_file() and path.suffix in (".npy", ".bin"):
        return "flat"
    if columnar_files(path):
        return "columnar"
    if not path.exists() and not Path(f"{prefix_of(path)}.idx").exists():
        raise DataError(f"data source {str(path)!r} does not exist: prepare it with `llmlaunch "
                        "data prepare --out DIR`, or point at existing token data")
    if path.is_dir():
        raise DataError(f"data source {str(path)!r} is a directory without manifest.json, .ds "
                        "files or .parquet/.arrow files: give a `llmlaunch data prepare` "
                        "directory, datatrove output or a folder of token columns")
    raise DataError(f"data source {str(path)!r} is none of: a `llmlaunch data prepare` directory, a "
                    "Megatron PREFIX (PREFIX.bin + PREFIX.idx), datatrove .ds output, a .npy/.bin "
                    "token file, or .parquet/.arrow files with a token column")


class TokenSource:
    """A source's documents in one token space (module docstring)."""

    def __init__(self, spec: SourceSpec, kind: str, files: list[TokenFile], *,
                 vocab_size: int | None = None, eod_id: int | None = None):
        self.spec, self.kind, self.files = spec, kind, files
        self.vocab_size, self.eod_id = vocab_size, eod_id
        first = 0
        for file in files:
            file.first_token = first
            first += file.tokens
        self.tokens = first
        self._file_starts = np.array([f.first_token for f in files] + [first], np.int64)
        self.documents = 0

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def dtype(self) -> str:
        return self.files[0].dtype.name if self.files else "uint16"

    def document_ends(self):
        """Yield int64 arrays of document end offsets in the source's token space, in order."""
        raise NotImplementedError

    def check_files(self) -> None:
        """DataError when the files are not what their index or manifest says."""

    def read(self, start: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """Tokens [start, start + length) of the token space as int64 (across files)."""
        out = np.empty(length, np.int64) if out is None else out
        if start < 0 or start + length > self.tokens:
            raise IndexError(f"{self.label}: tokens [{start}, {start + length}) outside "
                             f"[0, {self.tokens})")
        index = int(np.searchsorted(self._file_starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            file = self.files[index]
            offset = start + filled - file.first_token
            take = min(length - filled, file.tokens - offset)
            out[filled:filled + take] = file.array()[offset:offset + take]
            filled += take
            index += 1
        return out

    def fingerprint(self) -> list:
        """What identifies the data cheaply: every file's path, size and modification time."""
        out = []
        for file in self._fingerprint_files():
            stat = file.stat()
            out.append([str(file), stat.st_size, stat.st_mtime_ns])
        return out

    def _fingerprint_files(self) -> list[Path]:
        return [f.path for f in self.files]


class PreparedSource(TokenSource):
    def __init__(self, spec: SourceSpec, directory: Path):
        manifest_path = directory / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{manifest_path}: cannot read manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise DataError(f"{manifest_path}: not a `llmlaunch data prepare` manifest")
        if spec.split not in manifest.get("splits", {}):
            raise DataError(f"{manifest_path}: no split {spec.split!r} (have "
                            f"{', '.join(manifest.get('splits', {}))})")
        self.directory, self.manifest = directory, manifest
        self.shards = manifest["splits"][spec.split]["shards"]
        dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        files = [TokenFile(directory / s["tokens_file"], dtype, int(s["tokens"]))
                 for s in self.shards if int(s["tokens"])]
        super().__init__(spec, "prepared", files, vocab_size=int(manifest["vocab_size"]),
                         eod_id=manifest.get("eod_id"))
        self.documents = sum(int(s["documents"]) for s in self.shards if int(s["tokens"]))

    def check_files(self) -> None:
        for shard in self.shards:
            for key, unit, count in (("tokens_file", np.dtype(self.manifest["dtype"]).itemsize,
                                      int(shard["tokens"])), ("index_file", 8,
                                                              int(shard["documents"]) + 1)):
                path = self.directory / shard[key]
                if not path.is_file():
                    raise DataError(f"{path}: missing (the manifest lists it)")
                if path.stat().st_size != unit * count:
                    raise DataError(f"{path}: {path.stat().st_size} bytes, the manifest says "
                                    f"{unit * count}")

    def check_hashes(self) -> None:
        """Every shard's SHA-256 against the manifest (a full read: the index builder does it once
        per set of files)."""
        from .manifest import file_sha256

        for shard in self.shards:
            for key, digest in (("tokens_file", "tokens_sha256"), ("index_file", "index_sha256")):
                path = self.directory / shard[key]
                if digest in shard and file_sha256(path) != shard[digest]:
                    raise DataError(f"{path}: its SHA-256 is not the one the manifest records: "
                                    "the file changed after `data prepare` wrote it")

    def document_ends(self):
        for shard, file in zip([s for s in self.shards if int(s["tokens"])], self.files):
            offsets = np.fromfile(self.directory / shard["index_file"], "<u8")
            yield offsets[1:].astype(np.int64) + file.first_token

    def _fingerprint_files(self) -> list[Path]:
        return [self.directory / MANIFEST_FILE] + [f.path for f in self.files]


class MegatronSource(TokenSource):
    def __init__(self, spec: SourceSpec, prefix: Path):
        self.index = MegatronIndex(prefix)
        files = [TokenFile(self.index.bin_path, self.index.dtype, self.index.tokens)] \
            if self.index.tokens else []
        super().__init__(spec, "megatron", files)
        self.documents = self.index.documents

    def check_files(self) -> None:
        self.index.check()

    def document_ends(self):
        for start in range(0, self.documents, CHUNK_DOCUMENTS):
            yield self.index.document_ends(start, min(self.documents, start + CHUNK_DOCUMENTS))

    def _fingerprint_files(self) -> list[Path]:
        return [self.index.idx_path, self.index.bin_path]


class DatatroveSource(TokenSource):
    def __init__(self, spec: SourceSpec, path: Path):
        size = {"uint16": 2, "uint32": 4}.get(spec.dtype) if spec.dtype else None
        self.ds_files = [DatatroveFile(p, size) for p in datatrove_files(path)]
        super().__init__(spec, "datatrove", [TokenFile(f.path, f.dtype, f.tokens)
                                             for f in self.ds_files if f.tokens])
        self.documents = sum(f.documents for f in self.ds_files if f.tokens)
        if len({f.dtype for f in self.ds_files}) > 1:
            raise DataError(f"{path}: .ds files of different token sizes in one source")

    def check_files(self) -> None:
        for file in self.ds_files:
            file.check()

    def document_ends(self):
        for ds, file in zip([f for f in self.ds_files if f.tokens], self.files):
            for start in range(0, ds.documents, CHUNK_DOCUMENTS):
                yield np.asarray(ds.ends[start:start + CHUNK_DOCUMENTS], np.int64) + file.first_token

    def _fingerprint_files(self) -> list[Path]:
        return [p for f in self.ds_files for p in (f.path, Path(f"{f.path}.index"))]


class FlatSource(TokenSource):
    FLAT_DTYPES = ("uint16", "uint32")

    def __init__(self, spec: SourceSpec, path: Path):
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r")
            if array.ndim != 1 or array.dtype.name not in self.FLAT_DTYPES:
                raise DataError(f"{path}: expected a 1-D uint16/uint32 array, got {array.ndim}-D "
                                f"{array.dtype}")
            file = TokenFile(path, array.dtype, len(array), _array=array)
        else:
            dtype = np.dtype(spec.dtype or "uint16").newbyteorder("<")
            if dtype.name not in self.FLAT_DTYPES:
                raise DataError(f"dtype must be one of {', '.join(self.FLAT_DTYPES)}, got "
                                f"{spec.dtype!r}")
            size = path.stat().st_size
            if size % dtype.itemsize:
                raise DataError(f"{path}: size {size} is not a multiple of {dtype.itemsize} bytes "
                                f"({dtype.name})")
            file = TokenFile(path, dtype, size // dtype.itemsize)
        super().__init__(spec, "flat", [file] if file.tokens else [])
        self.documents = 1 if file.tokens else 0

    def document_ends(self):
        if self.tokens:
            yield np.array([self.tokens], np.int64)


def open_source(spec: SourceSpec, cache_dir: Path | None = None) -> TokenSource:
    """The source `spec` names, its files memory-mapped. A columnar source is read from its Megatron
    conversion under `cache_dir` (columnar.ensure_converted writes it, once, before ranks start)."""
    path = Path(spec.path)
    kind = detect_kind(path)
    if spec.split != "train" and kind != "prepared":
        raise DataError(f"data source {spec.path!r}: split {spec.split!r} needs a `llmlaunch data "
                        f"prepare` directory ({kind} data has one split)")
    if kind == "prepared":
        return PreparedSource(spec, path.parent if path.name == MANIFEST_FILE else path)
    if kind == "megatron":
        return MegatronSource(spec, prefix_of(path))
    if kind == "datatrove":
        return DatatroveSource(spec, path)
    if kind == "flat":
        return FlatSource(spec, path)
    if cache_dir is None:
        raise DataError(f"data source {spec.path!r}: parquet/arrow needs the run's index cache")
    prefix = converted_prefix(spec, cache_dir)
    if not is_megatron(prefix):
        raise DataError(f"data source {spec.path!r}: not converted yet (the pre-start data check "
                        "converts parquet/arrow once: run `python -m llmlaunch.launcher.run_data`)")
    return ColumnarSource(spec, prefix)


class ColumnarSource(MegatronSource):
    """Parquet/arrow token columns, read from their Megatron conversion (data/columnar.py)."""

    def __init__(self, spec: SourceSpec, prefix: Path):
        super().__init__(spec, prefix)
        self.kind = "columnar"

    def _fingerprint_files(self) -> list[Path]:
        return columnar_files(Path(self.spec.path))   # the data, not its conversion


def source_kind(spec: SourceSpec) -> str:
    return detect_kind(Path(spec.path))

