"""Per-document cleaning: normalisation, hashing, quality, decontamination, MinHash signatures.

The cleaning pass is split in two so that it can run on several processes and stay deterministic:

* ``analyze_document`` is pure and per-document (it runs in worker processes, in input order);
* the order-dependent decisions -- "is this an exact/near duplicate of an *earlier* kept
  document?" -- are taken in the parent by :class:`ExactDeduplicator` and :class:`NearDuplicateIndex`.

Step order per document (the first step that removes it is the one counted in the manifest):
normalise -> ``empty`` -> ``exact_dup`` -> quality filters -> ``decontaminated`` -> ``near_dup``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

from .quality import QualityThresholds, first_failing_filters
from .text import match_words, normalize_text, word_ngrams

KEPT = "kept"
EMPTY = "empty"


@dataclass(frozen=True)
class NearDupConfig:
    """MinHash LSH settings: Jaccard ``threshold`` over ``shingle_words``-word shingles, ``num_perm`` hashes."""

    enabled: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    shingle_words: int = 5


@dataclass(frozen=True)
class CleanContext:
    """Everything a worker needs to analyse documents (picklable, sent once per worker)."""

    normalization: str = "NFC"
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    eval_ngrams: frozenset = frozenset()
    decontam_ngram_words: int = 13
    near_dup: NearDupConfig = field(default_factory=NearDupConfig)
    seed: int = 0


class Analysis(NamedTuple):
    """Result of analysing one document.

    ``verdict`` is ``"kept"``, ``"empty"``, a quality filter name or ``"decontaminated"``; ``text`` is
    the normalised text (None unless kept); ``digest`` the 16-byte BLAKE2b of the normalised text;
    ``signature`` the MinHash values as bytes (None unless kept and near-dup is enabled).
    """

    verdict: str
    text: str | None
    digest: bytes | None
    signature: bytes | None


def text_digest(text: str) -> bytes:
    """16-byte BLAKE2b digest of the UTF-8 text, the key of exact deduplication."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def eval_ngram_set(documents: Iterable[str], n: int) -> tuple[frozenset, int]:
    """All ``n``-grams of match words in the eval ``documents``; also the number of eval docs shorter than ``n`` words."""
    grams: set[tuple[str, ...]] = set()
    too_short = 0
    for document in documents:
        words = match_words(document)
        if len(words) < n:
            too_short += 1
        grams.update(word_ngrams(words, n))
    return frozenset(grams), too_short


def is_contaminated(words: Sequence[str], eval_ngrams: frozenset, n: int) -> bool:
    """True if ``words`` share at least one ``n``-gram with the eval set (GPT-3's 13-gram overlap rule)."""
    return bool(eval_ngrams) and not eval_ngrams.isdisjoint(word_ngrams(words, n))


_MINHASH_TEMPLATES: dict[tuple[int, int], object] = {}


def minhash_signature(words: Sequence[str], num_perm: int, seed: int, shingle_words: int) -> bytes:
    """MinHash (datasketch, ``seed``) of the set of ``shingle_words``-word shingles, as uint32 bytes.

    A document shorter than one shingle is hashed as a single shingle of all its words.
    """
    from datasketch import MinHash

    key = (num_perm, seed)
    template = _MINHASH_TEMPLATES.get(key)
    if template is None:
        template = _MINHASH_TEMPLATES[key] = MinHash(num_perm=num_perm, seed=seed)
    shingles = {" ".join(gram).encode("utf-8") for gram in word_ngrams(words, shingle_words)}
    if not shingles:
        shingles = {" ".join(words).encode("utf-8")}
    minhash = MinHash(num_perm=num_perm, seed=seed, permutations=template.permutations, scheme=template.scheme)
    minhash.update_batch(list(shingles))  # min is order-independent
    return minhash.hashvalues.astype("<u4").tobytes()


def analyze_document(raw: str, ctx: CleanContext) -> Analysis:
    """Normalise one raw document and run the order-independent cleaning steps on it."""
    return analyze_documents([raw], ctx)[0]


def analyze_documents(raws: Sequence[str], ctx: CleanContext) -> list[Analysis]:
    """``analyze_document`` of each of ``raws``, the quality filters run on the batch at once."""
    texts = [normalize_text(raw, ctx.normalization) for raw in raws]
    nonempty = [text for text in texts if text]
    verdicts = iter(first_failing_filters(nonempty, ctx.thresholds) if nonempty else [])
    return [_finish(text, next(verdicts), ctx) if text else Analysis(EMPTY, None, None, None) for text in texts]


def _finish(text: str, failed: str | None, ctx: CleanContext) -> Analysis:
    """The analysis of non-empty normalised ``text`` whose first failing quality filter is ``failed``."""
    digest = text_digest(text)
    if failed is not None:
        return Analysis(failed, None, digest, None)
    words = None
    if ctx.eval_ngrams:
        words = match_words(text)
        if is_contaminated(words, ctx.eval_ngrams, ctx.decontam_ngram_words):
            return Analysis("decontaminated", None, digest, None)
    signature = None
    if ctx.near_dup.enabled:
        words = words if words is not None else match_words(text)
        signature = minhash_signature(words, ctx.near_dup.num_perm, ctx.seed, ctx.near_dup.shingle_words)
    return Analysis(KEPT, text, digest, signature)


class ExactDeduplicator:
    """Remembers digests of normalised texts; ``seen_before`` is True for every repeat after the first."""

    def __init__(self) -> None:
        self._digests: set[bytes] = set()

    def seen_before(self, digest: bytes) -> bool:
        """Record ``digest``; return True if it had been recorded already."""
        if digest in self._digests:
            return True
        self._digests.add(digest)
        return False


class NearDuplicateIndex:
    """MinHash LSH over kept documents (datasketch ``MinHashLSH``), with a Jaccard check of candidates.

    A document is a near duplicate if an earlier kept document has estimated Jaccard similarity
    >= ``threshold``; LSH proposes candidates, their stored signatures confirm them.
    """

    def __init__(self, config: NearDupConfig, seed: int) -> None:
        import numpy as np
        from datasketch import MinHash, MinHashLSH

        self._np = np
        self._config = config
        self._template = MinHash(num_perm=config.num_perm, seed=seed)
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self._signatures: dict[int, bytes] = {}

    def _minhash(self, signature: bytes):
        from datasketch import MinHash

        values = self._np.frombuffer(signature, dtype="<u4")
        return MinHash(
            seed=self._template.seed,
            hashvalues=values,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )

    def _jaccard(self, a: bytes, b: bytes) -> float:
        np = self._np
        return float(np.mean(np.frombuffer(a, dtype="<u4") == np.frombuffer(b, dtype="<u4")))

    def add_if_new(self, key: int, signature: bytes) -> bool:
        """Return False if ``signature`` near-duplicates an indexed document; else index it under ``key``, return True."""
        minhash = self._minhash(signature)
        for candidate in self._lsh.query(minhash):
            if self._jaccard(signature, self._signatures[candidate]) >= self._config.threshold:
                return False
        self._lsh.insert(key, minhash, check_duplication=False)
        self._signatures[key] = signature
        return True
