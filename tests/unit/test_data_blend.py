"""The deficit-first blend (data/blend.py), consumed-samples resume on any dp
(data/batch_stream.py), and the bounded-memory permutation (data/permutation.py)."""
import numpy as np
import pytest
from token_data import known_documents, write_datatrove, write_megatron, write_parquet

from llmlaunch.data.batch_stream import ReplicaBatches, replica_rows
from llmlaunch.data.blend import Blend, blend_period, deficit_first, running_counts
from llmlaunch.data.permutation import write_permutation
from llmlaunch.data.sample_index import SampleIndex, build_index
from llmlaunch.data.sources import SourceSpec, open_source

WEIGHTS = [0.5, 0.3, 0.2]


def test_deficit_first_by_hand():
    """Megatron's rule: argmax_k w_k * max(i, 1) - c_k, the first on a tie. By hand for 0.5/0.3/0.2:
    i=0: 0.5,0.3,0.2 -> 0; i=1: -0.5,0.3,0.2 -> 1; i=2: 0,-0.4,0.4 -> 2; i=3: 0.5,-0.1,-0.4 -> 0;
    i=4: 0,0.2,-0.2 -> 1; i=5: 0.5,-0.5,0 -> 0; i=6: 0,-0.2,0.2 -> 2; i=7: 0.5,0.1,-0.6 -> 0;
    i=8: 0,0.4,-0.4 -> 1; i=9: 0.5,-0.3,-0.2 -> 0."""
    assert deficit_first(WEIGHTS, 10).tolist() == [0, 1, 2, 0, 1, 0, 2, 0, 1, 0]
    assert deficit_first([2, 1, 1], 4).tolist() == [0, 1, 2, 0]     # weights are normalised


def test_three_sources_keep_their_shares_over_any_1000_samples():
    period = blend_period(48)
    order = deficit_first(WEIGHTS, period)
    blend = Blend(order, running_counts(order, 3))
    # two periods and the boundary between them, every window of 1000 consecutive samples
    sources = np.array([blend.locate(g)[0] for g in range(period - 30_000, period + 30_000)])
    counts = np.cumsum(np.eye(3, dtype=np.int64)[sources], axis=0)
    window = counts[1000:] - counts[:-1000]
    assert np.abs(window / 1000 - WEIGHTS).max() <= 0.01
    # each source's positions run 0, 1, 2, ... across the boundary: no sample skipped or repeated
    seen = [[], [], []]
    for g in range(period - 2000, period + 2000):
        s, j = blend.locate(g)
        seen[s].append(j)
    assert all(np.array_equal(np.diff(x), np.ones(len(x) - 1)) for x in seen)
    assert blend.samples_by_source(period + 10).sum() == period + 10


def test_replica_rows_follow_the_model_convention():
    assert replica_rows(8, 2, 1, 2) == [range(4, 6), range(6, 8)]
    with pytest.raises(ValueError, match="does not split"):
        replica_rows(6, 4, 0, 1)


@pytest.fixture(scope="module")
def blended(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    specs = [SourceSpec(str(write_megatron(root / "meg", known_documents(60, 1))), 0.5, name="meg"),
             SourceSpec(str(write_parquet(root / "pq", known_documents(50, 2))), 0.3, name="pq"),
             SourceSpec(str(write_datatrove(root / "dt", known_documents(40, 3))), 0.2, name="dt")]
    directory = build_index(specs, root / "index", seed=5, seq_len=8, global_batch=8, samples=8 * 40)
    return SampleIndex(directory, [open_source(s, root / "index") for s in specs])


def step_rows(index, step, dp, micro_batch, start_step=0):
    """A step's global batch gathered over the replicas of a dp-way run started at start_step."""
    rows = []
    for rank in range(dp):
        stream = iter(ReplicaBatches(index, global_batch=8, micro_batch=micro_batch, dp=dp,
                                     dp_rank=rank, start_step=start_step))
        for _ in range((step - start_step) * (8 // dp // micro_batch)):
            next(stream)
        rows += [next(stream) for _ in range(8 // dp // micro_batch)]
    return np.concatenate(rows)


def test_resume_at_step_k_on_another_dp_reads_the_uninterrupted_batches(blended):
    uninterrupted = [step_rows(blended, step, dp=2, micro_batch=2) for step in range(6)]
    assert not np.array_equal(uninterrupted[0], uninterrupted[1])
    for dp, micro_batch in ((1, 1), (4, 2), (8, 1)):
        for k in (3, 5):
            assert np.array_equal(step_rows(blended, k, dp, micro_batch, start_step=k),
                                  uninterrupted[k])
    assert blended.samples_by_source(48) == {"meg": 24, "pq": 14, "dt": 10}


def test_permutation_through_buckets_is_a_seeded_permutation(tmp_path):
    write_permutation(tmp_path / "a.npy", 100_003, np.random.default_rng(4), chunk=1000)
    write_permutation(tmp_path / "b.npy", 100_003, np.random.default_rng(4), chunk=1000)
    a = np.load(tmp_path / "a.npy")
    assert a.dtype == np.uint32 and np.array_equal(np.sort(a), np.arange(100_003))
    assert np.array_equal(a, np.load(tmp_path / "b.npy"))
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.02 and not list(tmp_path.glob(".perm-*"))
