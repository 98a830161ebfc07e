"""Layout validation and rank-to-group math (DeepSpeed's topology order)."""
import pytest

from llmlaunch.topology.layout import Layout, axis_spans_nodes, parallel_groups, rank_coords


def test_sixteen_gpu_example_from_the_docstring():
    groups = parallel_groups(dp=2, pp=2, tp=4)
    assert groups["tp"] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert groups["dp"][:4] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert groups["pp"][0] == [0, 8]


def test_groups_partition_the_world():
    for dp, pp, tp in [(2, 2, 2), (3, 2, 4), (1, 4, 2)]:
        world = dp * pp * tp
        for axis, size in (("tp", tp), ("pp", pp), ("dp", dp)):
            flat = sorted(r for g in parallel_groups(dp, pp, tp)[axis] for r in g)
            assert flat == list(range(world))
            assert all(len(g) == size for g in parallel_groups(dp, pp, tp)[axis])


def test_coords_match_deepspeed_topology():
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    topo = PipeModelDataParallelTopology(num_pp=3, num_mp=2, num_dp=4)
    for rank in range(24):
        c = topo.get_coord(rank)
        assert rank_coords(rank, dp=4, pp=3, tp=2) == (c.pipe, c.data, c.model)


def test_axis_spans_nodes_agrees_with_listing():
    def brute(axis, dp, pp, tp, gpn):
        return any(min(g) // gpn != max(g) // gpn for g in parallel_groups(dp, pp, tp)[axis])

    for dp in (1, 2, 3, 4):
        for pp in (1, 2, 3):
            for tp in (1, 2, 3, 4, 8):
                for gpn in (4, 6, 8):
                    for axis in ("tp", "pp", "dp"):
                        assert axis_spans_nodes(axis, dp, pp, tp, gpn) == brute(axis, dp, pp, tp, gpn)


def test_world_size_error_prints_the_product():
    with pytest.raises(ValueError, match=r"2\*2\*4 = 16 != world size 8"):
        Layout(dp=2, pp=2, tp=4).check_world_size(8)


def test_layout_rejects_bad_values():
    with pytest.raises(ValueError, match="recompute"):
        Layout(dp=1, pp=1, tp=1, recompute="some")
    with pytest.raises(ValueError, match="zero_stage"):
        Layout(dp=1, pp=1, tp=1, zero_stage=4)
    with pytest.raises(ValueError, match="tp must be a positive integer"):
        Layout(dp=1, pp=1, tp=0)
