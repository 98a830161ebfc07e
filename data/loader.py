"""Training-time reader of prepared token shards (numpy only; torch is never imported here).

* :class:`TokenWindowDataset` memory-maps the shards of one split (or a flat ``.bin``/``.npy`` token
  file) as one virtual token stream and cuts it into windows of ``seq_len + 1`` tokens: window ``i``
  is tokens ``[i * seq_len, i * seq_len + seq_len + 1)``, so consecutive windows overlap by the one
  token that is the last target of one and the first input of the next.  Windows run across
  document and shard boundaries (documents are separated by the end-of-document token).
* :class:`ShardSampler` orders window indices: epoch ``e`` uses the permutation
  ``numpy.random.default_rng(seed + e).permutation(num_windows)``, truncated to a whole number of
  global batches.  Each global batch (``micro_batch_size * dp_size`` consecutive permutation
  entries) is split into ``dp_size`` disjoint slices; rank ``r`` takes slice ``r``.  The sampler's
  whole state is two integers, ``(epoch, position)``, equivalently ``consumed_samples``.
* :class:`TokenWindowLoader` ties both together and yields ``int64`` arrays of shape
  ``[micro_batch_size, seq_len + 1]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError
from .vocab_check import check_batch

MANIFEST_FILE = "manifest.json"
FLAT_DTYPES = ("uint16", "uint32")


def _memmap_tokens(path: Path, dtype: str, expected_tokens: int | None = None) -> np.ndarray | None:
    """Read-only memmap of a flat little-endian token file (None for an empty file)."""
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise DataError(f"{path}: size {size} is not a multiple of {itemsize} bytes ({dtype})")
    if expected_tokens is not None and size // itemsize != expected_tokens:
        raise DataError(f"{path}: holds {size // itemsize} tokens, manifest says {expected_tokens}")
    if size == 0:
        return None
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")


def open_token_arrays(path: str | Path, split: str = "train", dtype: str | None = None) -> list[np.ndarray]:
    """The token arrays of ``path``: a prepared directory (or its manifest.json) for ``split``, or a flat file.

    Flat files: ``.npy`` (1-D uint16/uint32, memory-mapped) or raw ``.bin`` of ``dtype`` (default uint16).
    """
    path = Path(path)
    if path.name == MANIFEST_FILE:
        path = path.parent
    if path.is_dir():
        manifest_path = path / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{manifest_path}: cannot read manifest ({exc})") from None
        if split not in manifest.get("splits", {}):
            raise DataError(f"{manifest_path}: no split {split!r} (have {', '.join(manifest.get('splits', {}))})")
        arrays = []
        for shard in manifest["splits"][split]["shards"]:
            array = _memmap_tokens(path / shard["tokens_file"], manifest["dtype"], shard["tokens"])
            if array is not None:
                arrays.append(array)
        return arrays
    if not path.exists():
        raise DataError(f"token data not found: {path}")
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        if array.ndim != 1 or array.dtype.name not in FLAT_DTYPES:
            raise DataError(f"{path}: expected a 1-D uint16/uint32 array, got {array.ndim}-D {array.dtype}")
        return [array] if len(array) else []
    if path.suffix == ".bin":
        dtype = dtype or "uint16"
        if dtype not in FLAT_DTYPES:
            raise DataError(f"dtype must be one of {', '.join(FLAT_DTYPES)}, got {dtype!r}")
        array = _memmap_tokens(path, dtype)
        return [array] if array is not None else []
    raise DataError(f"{path}: expected a prepared data directory, manifest.json, .bin or .npy file")


class TokenWindowDataset:
    """Windows of ``seq_len + 1`` tokens over the concatenated shards of one split."""

    def __init__(self, path: str | Path, seq_len: int, *, split: str = "train", dtype: str | None = None) -> None:
        if seq_len < 1:
            raise ValueError("seq_len must be >= 1")
        self.path = Path(path)
        self.seq_len = seq_len
        self.split = split
        self._arrays = open_token_arrays(path, split, dtype)
        lengths = np.array([len(a) for a in self._arrays], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.num_tokens = int(self._starts[-1])
        self.num_windows = max(0, (self.num_tokens - 1) // seq_len)

    def __len__(self) -> int:
        return self.num_windows

    def read_tokens(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the virtual stream as int64 (may span shards)."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside [0, {self.num_tokens})")
        out = np.empty(length, dtype=np.int64)
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self._starts[shard])
            take = min(length - filled, len(self._arrays[shard]) - offset)
            out[filled : filled + take] = self._arrays[shard][offset : offset + take]
            filled += take
            shard += 1
        return out

    def __getitem__(self, index: int) -> np.ndarray:
        """Window ``index``: int64 array of ``seq_len + 1`` tokens."""
        index = int(index)
        if not 0 <= index < self.num_windows:
            raise IndexError(f"window {index} outside [0, {self.num_windows})")
        return self.read_tokens(index * self.seq_len, self.seq_len + 1)

    def get_batch(self, indices) -> np.ndarray:
        """Windows ``indices`` stacked into an int64 array ``[len(indices), seq_len + 1]``."""
        indices = np.asarray(indices, dtype=np.int64)
        batch = np.empty((len(indices), self.seq_len + 1), dtype=np.int64)
        for row, index in enumerate(indices):
            batch[row] = self[int(index)]
        return batch


class ShardSampler:
    """Seeded, epoch-aware, data-parallel order of window indices with exact resume.

    ``consumed_samples`` counts samples of all ranks together (``global_batch_size`` per step) and
    must be a multiple of ``global_batch_size``.  Iteration is endless unless ``max_epochs`` is set.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        micro_batch_size: int,
        dp_size: int = 1,
        dp_rank: int = 0,
        seed: int = 0,
        consumed_samples: int = 0,
        shuffle: bool = True,
        max_epochs: int | None = None,
        samples_per_step: int | None = None,
    ) -> None:
        if micro_batch_size < 1 or dp_size < 1:
            raise ValueError("micro_batch_size and dp_size must be >= 1")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must be in [0, {dp_size}), got {dp_rank}")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.num_samples = int(num_samples)
        self.micro_batch_size = micro_batch_size
        self.dp_size = dp_size
        self.dp_rank = dp_rank
        self.seed = seed
        self.shuffle = shuffle
        self.max_epochs = max_epochs
        self.global_batch_size = micro_batch_size * dp_size
        # an epoch holds whole optimizer steps when their size is given: then which samples a step
        # trains on does not depend on how dp and the micro-batch split it (a run resumed on
        # another layout reads on exactly where it stopped)
        step = samples_per_step or self.global_batch_size
        if step % self.global_batch_size:
            raise ValueError(f"samples_per_step={step} is not a multiple of micro_batch_size * "
                             f"dp_size = {self.global_batch_size}")
        self.samples_per_epoch = self.num_samples // step * step
        if self.samples_per_epoch == 0:
            raise ValueError(
                f"{self.num_samples} samples are fewer than one global batch of {self.global_batch_size}"
            )
        if consumed_samples < 0 or consumed_samples % self.global_batch_size:
            raise ValueError(
                f"consumed_samples={consumed_samples} is not a non-negative multiple of the global batch size "
                f"{self.global_batch_size}"
            )
        self.epoch, self.position = divmod(int(consumed_samples), self.samples_per_epoch)
        self._permutation_epoch: int | None = None
        self._permutation: np.ndarray | None = None

    @classmethod
    def from_state(cls, num_samples: int, epoch: int, position: int, **kwargs) -> "ShardSampler":
        """A sampler resumed at ``(epoch, position)`` (as returned by :meth:`state`)."""
        sampler = cls(num_samples, **kwargs)
        if not 0 <= position < sampler.samples_per_epoch or position % sampler.global_batch_size or epoch < 0:
            raise ValueError(f"invalid sampler state (epoch={epoch}, position={position})")
        sampler.epoch, sampler.position = int(epoch), int(position)
        return sampler

    def state(self) -> tuple[int, int]:
        """``(epoch, position)``: the complete resumable state (position counts samples of all ranks)."""
        return self.epoch, self.position

    @property
    def consumed_samples(self) -> int:
        """Samples consumed by all ranks since the start of training."""
        return self.epoch * self.samples_per_epoch + self.position

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The window order of ``epoch``: a permutation from ``seed + epoch`` (identity if not shuffling)."""
        if self._permutation_epoch != epoch:
            if self.shuffle:
                self._permutation = np.random.default_rng(self.seed + epoch).permutation(self.num_samples)
            else:
                self._permutation = np.arange(self.num_samples, dtype=np.int64)
            self._permutation_epoch = epoch
        assert self._permutation is not None
        return self._permutation

    def global_batch_indices(self) -> np.ndarray:
        """All ranks' indices of the next global batch, rank-major (does not advance)."""
        order = self.epoch_order(self.epoch)
        return order[self.position : self.position + self.global_batch_size].astype(np.int64)

    def next_indices(self) -> np.ndarray:
        """This rank's ``micro_batch_size`` window indices of the next global batch; advances the state."""
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            raise StopIteration
        start = self.position + self.dp_rank * self.micro_batch_size
        indices = self.epoch_order(self.epoch)[start : start + self.micro_batch_size].astype(np.int64)
        self.position += self.global_batch_size
        if self.position >= self.samples_per_epoch:
            self.epoch += 1
            self.position = 0
        return indices

    def __iter__(self) -> Iterator[np.ndarray]:
        while self.max_epochs is None or self.epoch < self.max_epochs:
            yield self.next_indices()


class TokenWindowLoader:
    """Yields this rank's micro-batches, int64 ``[micro_batch_size, seq_len + 1]``, from prepared shards.
    With ``vocab`` every batch is checked to hold only ids below it (vocab_check.check_batch).

    Resume by passing ``consumed_samples`` (all ranks together), or ``ShardSampler.from_state``.
    """

    def __init__(
        self,
        path: str | Path,
        seq_len: int,
        micro_batch_size: int,
        *,
        dp_size: int = 1,
        dp_rank: int = 0,
        seed: int = 0,
        consumed_samples: int = 0,
        split: str = "train",
        shuffle: bool = True,
        max_epochs: int | None = None,
        dtype: str | None = None,
        vocab: int | None = None,
        samples_per_step: int | None = None,
    ) -> None:
        self.dataset = TokenWindowDataset(path, seq_len, split=split, dtype=dtype)
        self.path = Path(path)
        self.vocab = vocab
        self.sampler = ShardSampler(
            len(self.dataset),
            micro_batch_size=micro_batch_size,
            dp_size=dp_size,
            dp_rank=dp_rank,
            seed=seed,
            consumed_samples=consumed_samples,
            shuffle=shuffle,
            max_epochs=max_epochs,
            samples_per_step=samples_per_step,
        )

    def _checked(self, batch: np.ndarray) -> np.ndarray:
        if self.vocab is not None:
            check_batch(batch, self.path, self.vocab)
        return batch

    def next_batch(self) -> np.ndarray:
        """The next micro-batch of this rank (with `vocab`: every id checked below it)."""
        return self._checked(self.dataset.get_batch(self.sampler.next_indices()))

    def __iter__(self) -> Iterator[np.ndarray]:
        for indices in self.sampler:
            yield self._checked(self.dataset.get_batch(indices))

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "consumed_samples"}`` -- plain ints, safe to put in a checkpoint."""
        epoch, position = self.sampler.state()
        return {"epoch": epoch, "position": position, "consumed_samples": self.sampler.consumed_samples}
