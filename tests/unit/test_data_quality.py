"""Unit tests of the quality filters, their configuration, and the text helpers."""

import json

import pytest

from llmlaunch.data import DataError, default_corpus_path
from llmlaunch.data import document_stats as docstats
from llmlaunch.data import quality as q
from llmlaunch.data.clean import eval_ngram_set, is_contaminated
from llmlaunch.data.text import match_words, normalize_text

T = q.QualityThresholds()


def corpus_documents(count):
    """The first ``count`` documents of the shipped corpus, normalised."""
    with open(default_corpus_path(), encoding="utf-8") as handle:
        return [normalize_text(json.loads(line)["text"]) for _, line in zip(range(count), handle)]


GOOD = corpus_documents(1)[0]
FILLER = " ".join(corpus_documents(6)[1:])  # plenty of ordinary prose


def fails_only(text, name):
    """True if ``text`` fails filter ``name`` (checked directly, not via the chain)."""
    return not q.FILTERS[name](docstats.Doc(text), T)


def test_good_document_passes_every_filter():
    assert q.first_failing_filter(GOOD, T) is None
    for name, passes in q.FILTERS.items():
        assert passes(docstats.Doc(GOOD), T), name


@pytest.mark.parametrize(
    "name, bad",
    [
        ("word_count", "The cat sat on the mat and that was all."),
        ("mean_word_length", " ".join(["supercalifragilistic antidisestablishment"] * 40) + " the and to of"),
        ("symbol_to_word_ratio", GOOD + " " + " ".join(["#topic"] * 30)),
        ("bullet_lines", "\n".join(f"- item number {i} of the list with the things to buy" for i in range(20))),
        ("ellipsis_lines", "\n".join(f"and then the story of line {i} goes on ..." for i in range(10))),
        ("alphabetic_words", GOOD + " " + " ".join(str(n) for n in range(200))),
        ("stop_words", " ".join(f"blue house{i} stands near green hill{i}." for i in range(15))),
        ("lorem_ipsum", GOOD + " Lorem ipsum dolor sit amet, consectetur adipiscing elit."),
        ("duplicate_lines", "\n".join([GOOD] + ["Click here to read more about this topic today."] * 12)),
        ("duplicate_paragraphs", "\n\n".join([GOOD] + ["Subscribe to our newsletter for the latest news."] * 4)),
        ("top_ngram", FILLER + " " + " ".join(["big dog"] * 150)),
        ("duplicate_ngrams", FILLER + " " + " ".join(["we sell the best shoes in the whole wide world"] * 12)),
    ],
    ids=lambda value: value if value in q.FILTERS else "",
)
def test_each_filter_has_a_failing_example(name, bad):
    assert fails_only(bad, name)
    assert not fails_only(GOOD, name)
    assert q.first_failing_filter(bad, q.QualityThresholds(disabled=tuple(n for n in q.FILTER_NAMES if n != name))) == name


def test_filter_table_matches_removal_keys():
    assert set(q.FILTER_NAMES) == set(q.FILTERS)
    assert len(q.FILTER_NAMES) == 12


def test_word_count_upper_bound_and_threshold_override():
    long_text = " ".join([GOOD] * 3)
    assert q.passes_word_count(docstats.Doc(long_text), T)
    assert not q.passes_word_count(docstats.Doc(long_text), q.QualityThresholds(max_words=100))


def test_repetition_metrics_on_known_input():
    words = "a b a b a b c d".split()
    # top 2-gram ("a","b") occurs 3 times, 2 chars each = 6 of 8 characters
    assert docstats.top_ngram_chars_fraction(words, 2) == pytest.approx(6 / 8)
    # 2-grams: ab ba ab(dup: covers 2,3) ba(dup: 3,4) ab(dup: 4,5) bc cd -> words 2..5 covered
    assert docstats.duplicate_ngram_chars_fraction(words, 2) == pytest.approx(4 / 8)
    assert docstats.duplicate_ngram_chars_fraction("x y z w".split(), 2) == 0.0


def test_duplicate_ngram_shortcut_agrees_with_checking_every_n():
    import random

    rng = random.Random(0)
    for trial in range(300):
        words = [rng.choice("ab cd ef gh ij kl mn op".split()[: rng.randint(2, 8)]) for _ in range(rng.randint(5, 80))]
        brute = all(docstats.duplicate_ngram_chars_fraction(words, n) <= limit for n, limit in T.max_duplicate_ngram_chars_fraction.items())
        assert q.passes_duplicate_ngrams(docstats.Doc(" ".join(words)), T) == brute, words
        fractions = [docstats.duplicate_ngram_chars_fraction(words, n) for n in range(5, 11)]
        assert fractions == sorted(fractions, reverse=True)


def test_load_thresholds_from_yaml_json_and_overrides(tmp_path):
    yaml_file = tmp_path / "q.yaml"
    yaml_file.write_text("min_words: 10\nmax_top_ngram_chars_fraction: {2: 0.5}\ndisabled: [stop_words]\n")
    t = q.load_thresholds(yaml_file, ["max_mean_word_length_chars=12", "disabled=lorem_ipsum,top_ngram"])
    assert t.min_words == 10
    assert t.max_top_ngram_chars_fraction == {2: 0.5, 3: 0.18, 4: 0.16}
    assert t.max_mean_word_length_chars == 12.0
    assert t.disabled == ("lorem_ipsum", "top_ngram")
    json_file = tmp_path / "q.json"
    json_file.write_text(json.dumps({"min_alphabetic_words_fraction": 0.5}))
    assert q.load_thresholds(json_file).min_alphabetic_words_fraction == 0.5
    assert q.first_failing_filter("The cat sat on the mat with the dog.", q.load_thresholds(None, ["min_words=5"])) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["no_such_threshold=1"], "unknown quality threshold"),
        (["min_words=abc"], "invalid value"),
        (["min_words"], "NAME=VALUE"),
        (["disabled=bogus_filter"], "unknown quality filter"),
    ],
)
def test_bad_threshold_overrides_raise_data_error(overrides, message):
    with pytest.raises(DataError, match=message):
        q.load_thresholds(None, overrides)


def test_normalisation_folds_unicode_forms_and_line_endings():
    nfd = "Cafe\u0301 au lait  \r\nsecond line \r\n"
    assert normalize_text(nfd) == "Caf\u00e9 au lait\nsecond line"
    assert normalize_text("\ufb01ne", "NFKC") == "fine"
    assert normalize_text("\ufb01ne", "NFC") == "\ufb01ne"


def test_match_words_ignore_case_and_punctuation():
    assert match_words("Don't STOP -- the Bus, (now)!") == ["dont", "stop", "the", "bus", "now"]


def test_contamination_needs_a_full_ngram():
    train = match_words(GOOD)
    grams, short = eval_ngram_set([" ".join(train[5:18]).upper() + "!!!"], 13)
    assert short == 0 and is_contaminated(train, grams, 13)
    grams12, short12 = eval_ngram_set([" ".join(train[5:17])], 13)
    assert short12 == 1 and not is_contaminated(train, grams12, 13)
