"""Tests of the numpy training loader over prepared shards and flat token files."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from llmlaunch.data import DataError, default_corpus_path
from llmlaunch.cli.data import add_prepare_arguments, run_prepare
from llmlaunch.data.loader import ShardSampler, TokenWindowDataset, TokenWindowLoader

SEQ_LEN = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared directory with several small shards, built from 60 corpus documents."""
    root = tmp_path_factory.mktemp("loader")
    with open(default_corpus_path(), encoding="utf-8") as handle:
        lines = handle.readlines()[:60]
    (root / "in.jsonl").write_text("".join(lines), encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    args = parser.parse_args(["--input", str(root / "in.jsonl"), "--out", str(root / "out"), "--vocab-size", "400",
                              "--shard-size-tokens", "1000", "--val-fraction", "0.1"])
    assert run_prepare(args) == 0
    return root / "out"


def all_tokens(out, split="train"):
    """The split's shards concatenated, read without the loader."""
    manifest = json.loads((out / "manifest.json").read_text())
    return np.concatenate([np.fromfile(out / s["tokens_file"], dtype="<u2") for s in manifest["splits"][split]["shards"]])


def test_windows_are_seq_len_plus_one_tokens_of_the_shard_stream(prepared):
    stream = all_tokens(prepared)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert len(manifest["splits"]["train"]["shards"]) > 2
    dataset = TokenWindowDataset(prepared, SEQ_LEN)
    assert dataset.num_tokens == len(stream) and len(dataset) == (len(stream) - 1) // SEQ_LEN
    for index in range(len(dataset)):  # includes windows that cross shard boundaries
        window = dataset[index]
        assert window.dtype == np.int64 and window.shape == (SEQ_LEN + 1,)
        assert np.array_equal(window, stream[index * SEQ_LEN : index * SEQ_LEN + SEQ_LEN + 1])
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    val = TokenWindowDataset(prepared / "manifest.json", 8, split="val")
    assert np.array_equal(val[0], all_tokens(prepared, "val")[:9])


def test_data_parallel_ranks_get_disjoint_slices_covering_the_global_batch(prepared):
    dp, micro = 3, 2
    loaders = [TokenWindowLoader(prepared, SEQ_LEN, micro, dp_size=dp, dp_rank=r, seed=5) for r in range(dp)]
    reference = ShardSampler(len(loaders[0].dataset), micro_batch_size=micro, dp_size=dp, seed=5)
    for _ in range(reference.samples_per_epoch // reference.global_batch_size + 2):  # crosses an epoch
        expected = reference.global_batch_indices()
        parts = [loader.sampler.next_indices() for loader in loaders]
        reference.next_indices()
        assert all(len(p) == micro for p in parts)
        assert np.array_equal(np.concatenate(parts), expected)
        assert len(set(np.concatenate(parts).tolist())) == dp * micro


def test_epoch_covers_distinct_windows_and_epochs_differ(prepared):
    n = len(TokenWindowDataset(prepared, SEQ_LEN))
    sampler = ShardSampler(n, micro_batch_size=4, seed=1)
    steps = sampler.samples_per_epoch // 4
    epoch0 = np.concatenate([sampler.next_indices() for _ in range(steps)])
    assert sampler.state() == (1, 0)
    epoch1 = np.concatenate([sampler.next_indices() for _ in range(steps)])
    assert len(set(epoch0.tolist())) == len(epoch0) == sampler.samples_per_epoch
    assert not np.array_equal(epoch0, epoch1)
    assert np.array_equal(np.sort(epoch0[:4]), np.sort(np.random.default_rng(1).permutation(n)[:4]))


@pytest.mark.parametrize("consumed_steps", [0, 3, 7, 11])
def test_resume_from_consumed_samples_matches_uninterrupted_run(prepared, consumed_steps):
    dp, micro = 2, 2
    global_batch = dp * micro
    for rank in range(dp):
        uninterrupted = TokenWindowLoader(prepared, SEQ_LEN, micro, dp_size=dp, dp_rank=rank, seed=3)
        batches = [uninterrupted.next_batch() for _ in range(consumed_steps + 6)]
        state = {"consumed_samples": consumed_steps * global_batch}
        resumed = TokenWindowLoader(prepared, SEQ_LEN, micro, dp_size=dp, dp_rank=rank, seed=3,
                                    consumed_samples=state["consumed_samples"])
        for expected in batches[consumed_steps:]:
            assert np.array_equal(resumed.next_batch(), expected)
        assert resumed.state_dict() == uninterrupted.state_dict()
        epoch, position = resumed.sampler.state()
        again = ShardSampler.from_state(len(resumed.dataset), epoch, position, micro_batch_size=micro, dp_size=dp,
                                        dp_rank=rank, seed=3)
        assert again.consumed_samples == resumed.sampler.consumed_samples


def test_two_instances_with_the_same_seed_agree_and_other_seeds_differ(prepared):
    a = TokenWindowLoader(prepared, SEQ_LEN, 4, seed=11)
    b = TokenWindowLoader(prepared, SEQ_LEN, 4, seed=11)
    c = TokenWindowLoader(prepared, SEQ_LEN, 4, seed=12)
    first_a = [a.next_batch() for _ in range(5)]
    assert all(np.array_equal(x, b.next_batch()) for x in first_a)
    assert not all(np.array_equal(x, c.next_batch()) for x in first_a)


def test_iteration_stops_after_max_epochs_and_unshuffled_order(prepared):
    loader = TokenWindowLoader(prepared, SEQ_LEN, 5, shuffle=False, max_epochs=1)
    batches = list(loader)
    assert len(batches) == len(loader.dataset) // 5
    assert np.array_equal(batches[1][0], loader.dataset[5])


def test_invalid_sampler_arguments(prepared):
    n = len(TokenWindowDataset(prepared, SEQ_LEN))
    with pytest.raises(ValueError, match="multiple of the global batch"):
        ShardSampler(n, micro_batch_size=2, dp_size=2, consumed_samples=6)
    with pytest.raises(ValueError, match="dp_rank"):
        ShardSampler(n, micro_batch_size=2, dp_size=2, dp_rank=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardSampler(3, micro_batch_size=2, dp_size=2)


def test_flat_bin_and_npy_fallbacks(tmp_path):
    tokens32 = (np.arange(1000, dtype=np.uint32) * 97) % 70_000
    tokens32.astype("<u4").tofile(tmp_path / "tokens.bin")
    np.save(tmp_path / "tokens.npy", tokens32.astype(np.uint16))
    flat = TokenWindowDataset(tmp_path / "tokens.bin", 10, dtype="uint32")
    assert len(flat) == 99 and np.array_equal(flat[3], tokens32[30:41])
    npy = TokenWindowDataset(tmp_path / "tokens.npy", 10)
    assert np.array_equal(npy[3], tokens32[30:41].astype(np.uint16))
    default16 = TokenWindowDataset(tmp_path / "tokens.bin", 10)
    assert default16.num_tokens == 2000
    batch = TokenWindowLoader(tmp_path / "tokens.npy", 10, 4, seed=0).next_batch()
    assert batch.shape == (4, 11) and batch.dtype == np.int64
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 3)
    with pytest.raises(DataError, match="not a multiple"):
        TokenWindowDataset(tmp_path / "odd.bin", 4)
    with pytest.raises(DataError, match="not found"):
        TokenWindowDataset(tmp_path / "nothing.bin", 4)


def test_truncated_shard_is_detected(prepared, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = copy / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="manifest says"):
        TokenWindowDataset(copy, SEQ_LEN)
    assert Path(prepared / "train-00000.bin").stat().st_size > 0
