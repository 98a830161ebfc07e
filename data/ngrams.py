"""Word n-gram repetition statistics of many documents at once (numpy).

:func:`ngram_fractions` returns, for every document of a batch, exactly the numbers that
``document_stats.top_ngram_chars_fraction`` and ``document_stats.duplicate_ngram_chars_fraction``
compute one document at a time (Gopher Table A1), with a few array operations per ``n`` for the
whole batch instead of a Python dict or Counter per document and ``n``.

How: the words of all documents are laid end to end.  An n-gram occurrence is identified by
``first`` = the position of the first occurrence of the same n-gram in its document, so two
n-grams are equal exactly when their ``first`` are.  For ``n = 1`` that comes from one dict per
document.  An n-gram at ``i`` can only repeat if the (n-1)-grams at ``i`` and ``i + 1`` both repeat,
so level ``n`` looks only at those positions (a set that shrinks fast as ``n`` grows; every other
n-gram is unique): the n-gram there is identified by the pair (``first`` of the (n-1)-gram at
``i``, word ``i + n - 1``), and sorting those pairs groups equal n-grams.  Word ids are unique per
document, so an n-gram that would run across a document boundary is unique and never a repeat.
Fractions are divided as Python ints, like the reference functions.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Sequence


def ngram_fractions(
    word_lists: Sequence[Sequence[str]], top_ns: Iterable[int], duplicate_ns: Iterable[int]
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """Per-document ``(top[n], duplicate[n])`` lists for ``n`` in ``top_ns`` / ``duplicate_ns`` (each >= 1).

    ``top[n][d] == top_ngram_chars_fraction(word_lists[d], n)`` and
    ``duplicate[n][d] == duplicate_ngram_chars_fraction(word_lists[d], n)``.
    """
    import numpy as np

    top_ns, duplicate_ns = sorted(set(top_ns)), sorted(set(duplicate_ns))
    if min(top_ns + duplicate_ns, default=1) < 1:
        raise ValueError("n-gram lengths must be >= 1")
    documents = len(word_lists)
    top = {n: [0.0] * documents for n in top_ns}
    duplicate = {n: [0.0] * documents for n in duplicate_ns}
    lengths = np.fromiter(map(len, word_lists), dtype=np.int64, count=documents)
    total = int(lengths.sum())
    if not (top_ns or duplicate_ns) or total == 0:
        return top, duplicate
    starts = np.zeros(documents + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    word_chars = np.fromiter(map(len, itertools.chain.from_iterable(word_lists)), dtype=np.int64, count=total)
    cum_chars = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(word_chars, out=cum_chars[1:])
    doc_chars = (cum_chars[starts[1:]] - cum_chars[starts[:-1]]).tolist()
    doc_of = np.repeat(np.arange(documents), lengths)
    batch = _Batch(total, doc_of, cum_chars, doc_chars)

    # n = 1: a word's id is the position of its first occurrence in its document (one dict each).
    word_id = np.fromiter(
        itertools.chain.from_iterable(
            map({}.setdefault, words, range(start, start + len(words)))
            for words, start in zip(word_lists, starts.tolist())
        ),
        dtype=np.int64,
        count=total,
    )
    word_count = np.bincount(word_id, minlength=total)[word_id]
    repeated = np.flatnonzero(word_count > 1)  # positions of repeated n-grams, ascending
    first, count = word_id[repeated], word_count[repeated]  # ... their ids and occurrence counts

    for n in range(1, max(top_ns + duplicate_ns) + 1):
        if n > 1:
            repeated, first, count = _next_level(repeated, first, word_id, n, total)
        if repeated.size == 0:
            break  # nothing repeats at this n, so nothing repeats at any larger n: all zeros
        if n in top:
            batch.top_fractions(top[n], repeated, count, n)
        if n in duplicate:
            batch.duplicate_fractions(duplicate[n], repeated[first != repeated], n)
    return top, duplicate


def _next_level(repeated, first, word_id, n: int, total: int):
    """``(repeated, first, count)`` of the n-grams from those of the (n-1)-grams."""
    import numpy as np

    # candidates: the (n-1)-grams at i and i + 1 both repeat, and the n-gram fits in the batch
    pair = np.flatnonzero(repeated[1:] == repeated[:-1] + 1)
    pair = pair[repeated[pair] <= total - n]
    positions = repeated[pair]
    if positions.size == 0:
        return positions, positions, positions
    keys = first[pair] * total + word_id[positions + n - 1]
    order = np.argsort(keys)
    keys, positions = keys[order], positions[order]
    group_starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    sizes = np.diff(np.append(group_starts, keys.size))
    group_first = np.minimum.reduceat(positions, group_starts)
    count = np.repeat(sizes, sizes)
    first = np.repeat(group_first, sizes)
    keep = count > 1
    order = np.argsort(positions[keep])  # back to ascending positions
    return positions[keep][order], first[keep][order], count[keep][order]


class _Batch:
    """Positions -> documents and characters, shared by the per-n computations."""

    def __init__(self, total: int, doc_of, cum_chars, doc_chars: list[int]) -> None:
        self.total = total
        self.doc_of = doc_of
        self.cum_chars = cum_chars
        self.doc_chars = doc_chars

    def top_fractions(self, out: list[float], repeated, count, n: int) -> None:
        """``out[d]`` = characters of document ``d``'s most frequent n-gram x its count / its characters."""
        import numpy as np

        docs = self.doc_of[repeated]
        segments = np.flatnonzero(np.concatenate(([True], docs[1:] != docs[:-1])))
        best = np.maximum.reduceat(count, segments)
        # the first position holding the largest count: the first-seen of the most frequent n-grams
        hits = np.flatnonzero(count == np.repeat(best, np.diff(np.append(segments, count.size))))
        where = repeated[hits[np.searchsorted(hits, segments)]]
        gram_chars = self.cum_chars[where + n] - self.cum_chars[where]
        for doc, most, chars in zip(docs[segments].tolist(), best.tolist(), gram_chars.tolist()):
            out[doc] = most * chars / self.doc_chars[doc]

    def duplicate_fractions(self, out: list[float], repeats, n: int) -> None:
        """``out[d]`` = characters of document ``d``'s words inside n-gram repeats (``repeats``: their positions) / its characters."""
        import numpy as np

        if repeats.size == 0:
            return
        # merge the word ranges [r, r + n) into disjoint runs, never across documents
        docs = self.doc_of[repeats]
        run_starts = np.flatnonzero(
            np.concatenate(([True], (repeats[1:] >= repeats[:-1] + n) | (docs[1:] != docs[:-1])))
        )
        run_ends = np.append(run_starts[1:], repeats.size) - 1
        chars = self.cum_chars[repeats[run_ends] + n] - self.cum_chars[repeats[run_starts]]
        per_doc = np.bincount(docs[run_starts], weights=chars, minlength=len(out))
        for doc in np.unique(docs).tolist():
            out[doc] = int(per_doc[doc]) / self.doc_chars[doc]
