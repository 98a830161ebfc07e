"""Layout validation and rank-to-group maths (DeepSpeed's topology order), pinned to hand-listed
groups; tests/torch/test_layout_topology.py checks the same maths against DeepSpeed's own topology."""
import pytest

from llmlaunch.topology.layout import AXES, Layout, rank_groups
from llmlaunch.topology.model_spec import ModelSpec


def test_sixteen_gpu_example_from_the_docstring():
    lay = Layout(dp=2, pp=2, tp=4)
    assert lay.groups("tp") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert lay.groups("dp") == [[0, 4], [1, 5], [2, 6], [3, 7], [8, 12], [9, 13], [10, 14], [11, 15]]
    assert lay.groups("pp") == [[0, 8], [1, 9], [2, 10], [3, 11], [4, 12], [5, 13], [6, 14], [7, 15]]
    assert lay.groups("tp", "dp") == [list(range(8)), list(range(8, 16))]   # a pipeline stage


def test_generic_groups_equal_the_explicit_formulas():
    """rank = (p * dp + d) * tp + t: the three families written out by hand."""
    for dp, pp, tp in [(2, 2, 2), (3, 2, 4), (1, 4, 2), (4, 1, 1)]:
        lay = Layout(dp=dp, pp=pp, tp=tp)
        world = dp * pp * tp
        assert lay.groups("tp") == [list(range(s, s + tp)) for s in range(0, world, tp)]
        assert lay.groups("dp") == [[(p * dp + d) * tp + t for d in range(dp)]
                                    for p in range(pp) for t in range(tp)]
        assert lay.groups("pp") == [[(p * dp + d) * tp + t for p in range(pp)]
                                    for d in range(dp) for t in range(tp)]
        for axis in AXES:
            flat = sorted(r for g in lay.groups(axis) for r in g)
            assert flat == list(range(world))
            for index, group in enumerate(lay.groups(axis)):
                assert all(lay.group_index(r, axis) == index for r in group)
                assert lay.group_span(group[0], axis) == (group[0], group[-1])


def test_coords_and_rank_of_invert_each_other():
    lay = Layout(dp=4, pp=3, tp=2)
    for rank in range(lay.world_size):
        c = lay.coords(rank)
        assert rank == (c["pp"] * 4 + c["dp"]) * 2 + c["tp"]
        assert lay.rank_of(**c) == rank
    with pytest.raises(ValueError, match="outside world size 24"):
        lay.coords(24)


def test_rank_groups_with_more_axes():
    # four axes [2, 3, 2, 2]: groups over axes 1 and 3 (strides 2 and 12)
    groups = rank_groups([2, 3, 2, 2], [False, True, False, True])
    assert len(groups) == 4 and all(len(g) == 6 for g in groups)
    assert groups[0] == [0, 2, 4, 12, 14, 16]
    assert groups[1] == [1, 3, 5, 13, 15, 17]
    assert sorted(r for g in groups for r in g) == list(range(24))


def test_spans_nodes_agrees_with_listing():
    def brute(lay, axis, gpn):
        return any(min(g) // gpn != max(g) // gpn for g in lay.groups(axis))

    for dp in (1, 2, 3, 4):
        for pp in (1, 2, 3):
            for tp in (1, 2, 3, 4, 8):
                lay = Layout(dp=dp, pp=pp, tp=tp)
                for gpn in (4, 6, 8):
                    for axis in AXES:
                        assert lay.spans_nodes(axis, gpn) == brute(lay, axis, gpn)


def test_world_size_error_prints_the_product():
    with pytest.raises(ValueError, match=r"dp\*pp\*tp = 2\*2\*4 = 16 but the job has 8 ranks"):
        Layout(dp=2, pp=2, tp=4).check_world_size(8)


def test_model_checks_name_what_does_not_divide():
    spec = ModelSpec(arch="llama", layers=2, hidden=96, heads=6, kv_heads=2, ffn_hidden=200)
    assert Layout(dp=1, pp=2, tp=2).model_reasons(spec) == []
    reasons = Layout(dp=1, pp=3, tp=4).model_reasons(spec)
    assert reasons == ["tp=4 does not divide heads=6", "tp=4 does not divide kv_heads=2",
                       "pp=3 exceeds the 2 layers (every stage needs one)"]
    assert Layout(dp=1, pp=1, tp=3).model_reasons(spec) == ["tp=3 does not divide kv_heads=2",
                                                             "tp=3 does not divide ffn_hidden=200"]
    with pytest.raises(ValueError, match="tp=4 does not divide heads=6; "):
        Layout(dp=1, pp=1, tp=4).check_model(spec)


def test_layout_rejects_bad_values():
    with pytest.raises(ValueError, match="recompute"):
        Layout(dp=1, pp=1, tp=1, recompute="some")
    with pytest.raises(ValueError, match="zero_stage"):
        Layout(dp=1, pp=1, tp=1, zero_stage=4)
    with pytest.raises(ValueError, match="tp must be a positive integer"):
        Layout(dp=1, pp=1, tp=0)
    with pytest.raises(ValueError, match="needs a pipeline"):
        Layout(dp=1, pp=1, tp=1, virtual_stages=2)
