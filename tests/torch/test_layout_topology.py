"""The layout's rank maths against DeepSpeed's own PipeModelDataParallelTopology: the groups the
planner and the dry-run report print are the ones DeepSpeed's grid builds."""
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

from llmlaunch.topology.layout import Layout


def test_coords_and_groups_match_deepspeed_topology():
    for dp, pp, tp in [(4, 3, 2), (2, 2, 2), (1, 4, 1), (3, 1, 4)]:
        topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
        lay = Layout(dp=dp, pp=pp, tp=tp)
        for rank in range(lay.world_size):
            c = topo.get_coord(rank)
            # cp = 1: the context axis adds coordinate 0 and changes no rank's place
            assert lay.coords(rank) == {"pp": c.pipe, "dp": c.data, "tp": c.model, "cp": 0}
        for axis, ds_axis in (("tp", "model"), ("dp", "data"), ("pp", "pipe")):
            assert sorted(map(sorted, lay.groups(axis))) == sorted(
                map(sorted, topo.get_axis_comm_lists(ds_axis)))


def test_expert_groups_match_deepspeed_moe():
    """Layout.groups('ep') / ('edp') are DeepSpeed-MoE's expert-parallel and expert-data-parallel
    groups (deepspeed.utils.groups._get_expert_parallel_ranks, its default E + D order)."""
    from deepspeed.utils.groups import _get_expert_parallel_ranks

    for dp, pp, tp, ep in [(8, 1, 2, 4), (4, 2, 2, 2), (6, 2, 1, 3), (4, 1, 1, 4), (4, 3, 2, 1)]:
        lay = Layout(dp=dp, pp=pp, tp=tp, ep=ep)
        expert, expert_data = _get_expert_parallel_ranks(lay.world_size, tp, ep, pp)
        assert sorted(lay.groups("ep")) == sorted(expert)
        assert sorted(lay.groups("edp")) == sorted(expert_data)
