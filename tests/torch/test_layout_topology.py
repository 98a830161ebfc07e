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
            assert lay.coords(rank) == {"pp": c.pipe, "dp": c.data, "tp": c.model}
        for axis, ds_axis in (("tp", "model"), ("dp", "data"), ("pp", "pipe")):
            assert sorted(map(sorted, lay.groups(axis))) == sorted(
                map(sorted, topo.get_axis_comm_lists(ds_axis)))
