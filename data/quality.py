"""Document-level quality filters in the style of Gopher and C4.

Sources:

* Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
  Gopher", Appendix A.1.1 ("quality filtering") and Table A1 (repetition removal).
* C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer", Section 2.2.

Each filter is a small pure function ``f(doc, thresholds) -> bool`` that returns True when the
document *passes*.  ``first_failing_filter`` runs them in ``FILTER_NAMES`` order and returns the
name of the first that fails; that name is the key under which the manifest counts the removal.
``first_failing_filters`` does the same for a batch of documents, computing the n-gram statistics
of the whole batch at once (:mod:`llmlaunch.data.ngrams`); the results are the same.
The document views the filters measure (words, content words, lines, ...) and their definitions
are in :mod:`llmlaunch.data.document_stats`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .document_stats import Doc, duplicate_fractions
from .errors import DataError

# Gopher A.1.1: "does not contain at least two of the following English words".
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_STOP_WORD_RE = re.compile(r"(?<!\w)(?:" + "|".join(sorted(GOPHER_STOP_WORDS)) + r")(?!\w)", re.IGNORECASE)
BULLETS = ("\u2022", "\u2023", "\u25e6", "\u2043", "\u25cf", "\u25aa", "-", "*", "+")
ELLIPSES = ("...", "\u2026")


@dataclass(frozen=True)
class QualityThresholds:
    """Thresholds of the quality filters; defaults are the published Gopher/C4 values.

    ``disabled`` lists filter names (see ``FILTER_NAMES``) to skip.
    """

    # Gopher A.1.1: keep documents with 50..100,000 words.
    min_words: int = 50
    max_words: int = 100_000
    # Gopher A.1.1: mean word length within 3..10 characters.
    min_mean_word_length_chars: float = 3.0
    max_mean_word_length_chars: float = 10.0
    # Gopher A.1.1: symbol-to-word ratio (hash symbol or ellipsis) below 0.1.
    max_symbol_to_word_ratio: float = 0.1
    # Gopher A.1.1: remove documents with more than 90% of lines starting with a bullet point...
    max_bullet_lines_fraction: float = 0.9
    # ...or more than 30% of lines ending with an ellipsis.
    max_ellipsis_lines_fraction: float = 0.3
    # Gopher A.1.1: at least 80% of words contain at least one alphabetic character.
    min_alphabetic_words_fraction: float = 0.8
    # Gopher A.1.1: at least two of the stop words ("the", "be", "to", "of", "and", "that", "have", "with").
    min_stop_words: int = 2
    # Gopher Table A1: duplicate line fraction 0.30, duplicate line character fraction 0.20.
    max_duplicate_lines_fraction: float = 0.30
    max_duplicate_line_chars_fraction: float = 0.20
    # Gopher Table A1: duplicate paragraph fraction 0.30, duplicate paragraph character fraction 0.20.
    max_duplicate_paragraphs_fraction: float = 0.30
    max_duplicate_paragraph_chars_fraction: float = 0.20
    # Gopher Table A1: top 2-, 3-, 4-gram character fraction 0.20, 0.18, 0.16.
    max_top_ngram_chars_fraction: Mapping[int, float] = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    # Gopher Table A1: duplicate 5..10-gram character fraction 0.15, 0.14, 0.13, 0.12, 0.11, 0.10.
    max_duplicate_ngram_chars_fraction: Mapping[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    disabled: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (n-gram keys as strings), used in the manifest."""
        data = dataclasses.asdict(self)
        for key in ("max_top_ngram_chars_fraction", "max_duplicate_ngram_chars_fraction"):
            data[key] = {str(n): float(v) for n, v in sorted(data[key].items())}
        data["disabled"] = list(self.disabled)
        return data



# ----------------------------------------------------------------------------------------------
# The filters.  Each returns True when the document passes.
# ----------------------------------------------------------------------------------------------


def passes_word_count(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher A.1.1: number of words within [min_words, max_words] (50..100,000)."""
    return t.min_words <= doc.content_word_count <= t.max_words


def passes_mean_word_length(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher A.1.1: mean word length within [3, 10] characters."""
    words = doc.content_word_count
    if not words:
        return False
    mean_chars = doc.content_word_chars / words
    return t.min_mean_word_length_chars <= mean_chars <= t.max_mean_word_length_chars


def passes_symbol_to_word_ratio(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher A.1.1: hash-symbol-to-word and ellipsis-to-word ratios both below 0.1."""
    words = max(doc.content_word_count, 1)
    hashes = doc.text.count("#")
    ellipses = doc.text.count("...") + doc.text.count("\u2026")
    return max(hashes, ellipses) / words < t.max_symbol_to_word_ratio


def passes_bullet_lines(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher A.1.1: at most 90% of lines start with a bullet point."""
    lines = doc.lines
    if not lines:
        return True
    bullets = sum(1 for line in lines if line.startswith(BULLETS))
    return bullets / len(lines) <= t.max_bullet_lines_fraction


def passes_ellipsis_lines(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher A.1.1: at most 30% of lines end with an ellipsis."""
    lines = doc.lines
    if not lines:
        return True
    ellipses = sum(1 for line in lines if line.endswith(ELLIPSES))
    return ellipses / len(lines) <= t.max_ellipsis_lines_fraction


def passes_alphabetic_words(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher A.1.1: at least 80% of words contain an alphabetic character."""
    words = len(doc.words)
    if not words:
        return False
    return doc.alphabetic_word_count / words >= t.min_alphabetic_words_fraction


def passes_stop_words(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher A.1.1: contains at least two of the eight stop words (the, be, to, of, and, that, have, with)."""
    if t.min_stop_words <= 0:
        return True
    present: set[str] = set()
    for match in _STOP_WORD_RE.finditer(doc.text):  # stop at the first min_stop_words distinct ones
        present.add(match.group().lower())
        if len(present) >= t.min_stop_words:
            return True
    return False


def passes_duplicate_lines(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher Table A1: duplicate-line fraction <= 0.30 and duplicate-line character fraction <= 0.20."""
    lines_fraction, chars_fraction = duplicate_fractions(doc.lines)
    return lines_fraction <= t.max_duplicate_lines_fraction and chars_fraction <= t.max_duplicate_line_chars_fraction


def passes_duplicate_paragraphs(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher Table A1: duplicate-paragraph fraction <= 0.30 and character fraction <= 0.20."""
    paras_fraction, chars_fraction = duplicate_fractions(doc.paragraphs)
    return (
        paras_fraction <= t.max_duplicate_paragraphs_fraction
        and chars_fraction <= t.max_duplicate_paragraph_chars_fraction
    )


def passes_top_ngram(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher Table A1: the most common 2/3/4-gram covers at most 20/18/16% of the characters."""
    return all(doc.top_ngram_fraction(n) <= limit for n, limit in sorted(t.max_top_ngram_chars_fraction.items()))


def passes_duplicate_ngrams(doc: Doc, t: QualityThresholds) -> bool:
    """Gopher Table A1: repeated 5..10-grams cover at most 15..10% of the characters.

    Words covered by repeated m-grams are also covered by repeated n-grams for n < m, so the
    fraction never grows with n: once it is within every remaining limit, the rest can be skipped.
    """
    limits = sorted(t.max_duplicate_ngram_chars_fraction.items())
    for position, (n, limit) in enumerate(limits):
        fraction = doc.duplicate_ngram_fraction(n)
        if fraction > limit:
            return False
        if all(fraction <= later for _, later in limits[position + 1 :]):
            return True
    return True


def passes_lorem_ipsum(doc: Doc, t: QualityThresholds) -> bool:
    """C4 (Raffel et al. 2020, Sec. 2.2): remove any page containing the placeholder phrase "lorem ipsum"."""
    return "lorem ipsum" not in doc.text.lower()


# Order matters only for which name a document failing several filters is counted under.
FILTERS: dict[str, Callable[[Doc, QualityThresholds], bool]] = {
    "word_count": passes_word_count,
    "mean_word_length": passes_mean_word_length,
    "symbol_to_word_ratio": passes_symbol_to_word_ratio,
    "bullet_lines": passes_bullet_lines,
    "ellipsis_lines": passes_ellipsis_lines,
    "alphabetic_words": passes_alphabetic_words,
    "stop_words": passes_stop_words,
    "lorem_ipsum": passes_lorem_ipsum,
    "duplicate_lines": passes_duplicate_lines,
    "duplicate_paragraphs": passes_duplicate_paragraphs,
    "top_ngram": passes_top_ngram,
    "duplicate_ngrams": passes_duplicate_ngrams,
}
FILTER_NAMES: tuple[str, ...] = tuple(FILTERS)


def first_failing_filter(text: str, thresholds: QualityThresholds) -> str | None:
    """Return the name of the first enabled filter that ``text`` fails, or None if it passes all."""
    return _first_failing(Doc(text), thresholds)


def first_failing_filters(texts: Sequence[str], thresholds: QualityThresholds) -> list[str | None]:
    """``first_failing_filter`` of each of ``texts``, with the n-gram statistics computed for a batch at once.

    The filters before the first n-gram filter run first; the documents that pass them get their
    n-gram statistics in one :func:`~llmlaunch.data.ngrams.ngram_fractions` call, then the rest run.
    """
    from .ngrams import ngram_fractions

    enabled = [(name, passes) for name, passes in FILTERS.items() if name not in thresholds.disabled]
    split = next((i for i, (name, _) in enumerate(enabled) if name in ("top_ngram", "duplicate_ngrams")), len(enabled))
    docs = [Doc(text) for text in texts]
    verdicts = [_first_failing(doc, thresholds, enabled[:split]) for doc in docs]
    reaching = [index for index, verdict in enumerate(verdicts) if verdict is None]
    if not reaching or split == len(enabled):
        return verdicts
    enabled_names = {name for name, _ in enabled}
    top_ns = [n for n in thresholds.max_top_ngram_chars_fraction if n >= 1] if "top_ngram" in enabled_names else []
    duplicate_ns = [n for n in thresholds.max_duplicate_ngram_chars_fraction if n >= 1] if "duplicate_ngrams" in enabled_names else []
    top, duplicate = ngram_fractions([docs[index].words for index in reaching], top_ns, duplicate_ns)
    for position, index in enumerate(reaching):
        docs[index].top_ngram = {n: values[position] for n, values in top.items()}
        docs[index].duplicate_ngram = {n: values[position] for n, values in duplicate.items()}
        verdicts[index] = _first_failing(docs[index], thresholds, enabled[split:])
    return verdicts


def _first_failing(doc: Doc, thresholds: QualityThresholds, enabled=None) -> str | None:
    """The name of the first of the ``enabled`` (name, filter) pairs that ``doc`` fails, or None."""
    if enabled is None:
        enabled = [(name, passes) for name, passes in FILTERS.items() if name not in thresholds.disabled]
    for name, passes in enabled:
        if not passes(doc, thresholds):
            return name
    return None


# ----------------------------------------------------------------------------------------------
# Configuration: YAML/JSON file and NAME=VALUE overrides.
# ----------------------------------------------------------------------------------------------


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Convert an override ``value`` to the type of the field's ``default``."""
    try:
        if name == "disabled":
            items = value.split(",") if isinstance(value, str) else list(value)
            items = tuple(str(item).strip() for item in items if str(item).strip())
            unknown = sorted(set(items) - set(FILTER_NAMES))
            if unknown:
                raise DataError(f"unknown quality filter(s) {', '.join(unknown)} (known: {', '.join(FILTER_NAMES)})")
            return items
        if isinstance(default, Mapping):
            if isinstance(value, str):
                value = json.loads(value)
            merged = dict(default)
            merged.update({int(n): float(v) for n, v in dict(value).items()})
            return merged
        if isinstance(value, bool):
            raise TypeError
        if isinstance(default, int):
            number = float(value)
            if number != int(number):
                raise TypeError
            return int(number)
        return float(value)
    except DataError:
        raise
    except (TypeError, ValueError, json.JSONDecodeError):
        raise DataError(f"quality threshold {name}: invalid value {value!r}") from None


def thresholds_with_overrides(base: QualityThresholds, overrides: Mapping[str, Any]) -> QualityThresholds:
    """Return ``base`` with the named fields replaced; unknown names raise ``DataError``."""
    defaults = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    changes = {}
    for name, value in overrides.items():
        if name not in defaults:
            raise DataError(f"unknown quality threshold {name!r} (known: {', '.join(defaults)})")
        changes[name] = _coerce(name, value, defaults[name])
    return dataclasses.replace(base, **changes)


def load_thresholds(path: str | Path | None = None, overrides: Sequence[str] = ()) -> QualityThresholds:
    """Build thresholds from defaults, then a YAML/JSON mapping file, then ``NAME=VALUE`` strings."""
    thresholds = QualityThresholds()
    if path is not None:
        import yaml  # JSON is a subset of YAML

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataError(f"{path}: cannot read quality config ({exc.strerror or exc})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: invalid YAML/JSON quality config ({type(exc).__name__})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise DataError(f"{path}: quality config must be a mapping of threshold names to values")
        thresholds = thresholds_with_overrides(thresholds, data)
    parsed = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep:
            raise DataError(f"--quality expects NAME=VALUE, got {item!r}")
        parsed[name.strip()] = value.strip()
    return thresholds_with_overrides(thresholds, parsed)
