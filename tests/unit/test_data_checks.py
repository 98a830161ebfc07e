"""Data against the model, before any rank starts and per batch (data/checks.py, vocab_check.py):
the message names the file, what it holds and the setting that would fit."""
import json

import numpy as np
import pytest
from token_data import prepare_checked

from llmlaunch.config import RunConfig
from llmlaunch.data import DataError, default_corpus_path
from llmlaunch.data.checks import check_against_model, summarize
from llmlaunch.data.loader import TokenWindowLoader
from llmlaunch.data.prepare import PrepareConfig, prepare



@pytest.fixture(scope="module")
def prepared_2048(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "d2048"
    prepare(PrepareConfig(inputs=[str(default_corpus_path())], out=out, vocab_size=2048, seed=1,
                          progress=False))
    return out


def run_config(path, vocab=1024, **layout):
    config = RunConfig()
    config.model.vocab, config.model.seq_len = vocab, 64
    config.data.path = str(path)
    for key, value in layout.items():
        setattr(config.layout, key, value)
    return config.validate()


def test_prepared_with_a_larger_vocabulary_is_refused_with_the_fix(prepared_2048, tmp_path):
    with pytest.raises(DataError, match=r"d2048' was tokenized with a vocabulary of 2048, but "
                                        r"model.vocab is 1024: set model.vocab to at least 2048, "
                                        r"or prepare the data with `llmlaunch data prepare "
                                        r"--vocab-size 1024`"):
        prepare_checked(run_config(prepared_2048), tmp_path)
    held = prepare_checked(run_config(prepared_2048, vocab=2048), tmp_path)
    assert "uint16 tokens, tokenized with a vocabulary of 2048" in held


def test_random_bytes_are_not_token_data(tmp_path):
    junk = tmp_path / "data.bin"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"data.bin' holds token ids up to 65\d\d\d, but model.vocab "
                                        r"is 1024: .* not token data at all"):
        prepare_checked(run_config(junk), tmp_path)


def test_flat_files_dtype_and_largest_id(tmp_path):
    ids = np.arange(20_000, dtype=np.uint32) % 3000
    ids.tofile(tmp_path / "tokens.bin")
    np.save(tmp_path / "tokens.npy", ids)
    summary = summarize(tmp_path / "tokens.npy")
    assert (summary.kind, summary.dtype, summary.tokens, summary.max_token_id) == \
        ("flat", "uint32", 20_000, 2999)
    assert summary.ids_needed == 3000
    as_uint32 = run_config(tmp_path / "tokens.bin", vocab=3000)
    as_uint32.data.dtype = "uint32"
    assert "40,000 uint16" not in prepare_checked(as_uint32, tmp_path)
    assert prepare_checked(as_uint32, tmp_path).startswith("20,000 uint32 tokens, token ids up to 2999")


def test_too_little_or_no_data(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "short.bin")
    with pytest.raises(DataError, match=r"holds 100 tokens: 1 sequence\(s\) of 65 tokens, fewer "
                                        r"than one global batch of 4"):
        prepare_checked(run_config(tmp_path / "short.bin", dp=2, micro_batch=2), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty' is a directory without manifest.json"):
        prepare_checked(run_config(tmp_path / "empty"), tmp_path)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a `llmlaunch data prepare` manifest"):
        prepare_checked(run_config(tmp_path / "fake"), tmp_path)


def test_summary_checks_windows_against_the_global_batch(prepared_2048):
    summary = summarize(prepared_2048)
    check_against_model(summary, vocab=4096, seq_len=64, global_batch=16)
    with pytest.raises(DataError, match="fewer than one global batch"):
        check_against_model(summary, vocab=4096, seq_len=64, global_batch=10**6)


def test_loader_checks_every_batch_with_the_same_message(tmp_path):
    ids = np.full(5_000, 7, dtype=np.uint16)
    ids[4_000] = 1500                      # data that changed after the pre-start check
    ids.tofile(tmp_path / "t.bin")
    loader = TokenWindowLoader(tmp_path / "t.bin", 64, 2, seed=0, vocab=1024, shuffle=False)
    with pytest.raises(DataError, match=r"t.bin' holds token ids up to 1500, but model.vocab is "
                                        r"1024: set model.vocab to at least 1501"):
        for _ in loader:
            pass
    batches = TokenWindowLoader(tmp_path / "t.bin", 64, 2, seed=0, vocab=2048, max_epochs=1)
    assert sum(1 for _ in batches) > 0


def test_a_shard_that_changed_after_prepare_is_refused(prepared_2048, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared_2048, copy)
    shard = copy / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 1                                         # same size, other bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-00000.bin: its SHA-256 is not the one the manifest"):
        prepare_checked(run_config(copy, vocab=2048), tmp_path)
