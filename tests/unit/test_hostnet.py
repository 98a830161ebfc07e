"""Where a multi-host job's ranks meet (launcher/hostnet.py) and where they ran
(launcher/placement.py), on hand-made inputs."""
import json
from collections import namedtuple

import pytest

from llmlaunch.launcher.hostnet import (interface_with_address, master_address, socket_ifname_env,
                                        source_address_to)
from llmlaunch.launcher.placement import rank_entry, record_placement
from llmlaunch.topology.layout import Layout

Snic = namedtuple("Snic", "family address netmask broadcast ptp")


def test_master_address_is_the_first_nodes_address():
    assert master_address("node1", 2, resolve={"node1": "10.231.0.11"}.__getitem__) == "10.231.0.11"
    assert master_address("localhost", 1, resolve=lambda name: "127.0.0.1") == "127.0.0.1"


def test_a_loopback_master_on_several_hosts_is_refused_with_the_node_named():
    with pytest.raises(ValueError, match=r"'gpu-001' resolves to 127\.0\.1\.1, a loopback address "
                                         r"the other 3 host\(s\) cannot reach"):
        master_address("gpu-001", 4, resolve=lambda name: "127.0.1.1")


def test_an_unresolvable_master_is_refused():
    def fails(name):
        raise OSError("Name or service not known")
    with pytest.raises(ValueError, match="'gpu-001' does not resolve"):
        master_address("gpu-001", 2, resolve=fails)


def test_interface_is_the_one_holding_the_source_address():
    interfaces = {"lo": [Snic(2, "127.0.0.1", None, None, None)],
                  "ib0": [Snic(2, "10.1.0.5", None, None, None)],
                  "eth0": [Snic(17, "02:fc:00:00:00:01", None, None, None),
                           Snic(2, "192.0.2.2", None, None, None)]}
    assert interface_with_address("192.0.2.2", interfaces) == "eth0"
    assert interface_with_address("10.1.0.5", interfaces) == "ib0"
    with pytest.raises(ValueError, match="no interface holds 10.9.9.9"):
        interface_with_address("10.9.9.9", interfaces)


def test_source_address_to_loopback_is_loopback():
    assert source_address_to("127.0.0.1") == "127.0.0.1"


def test_interface_variables_only_where_the_user_left_them_unset():
    reach = {"10.231.0.11": "eth0"}.__getitem__
    assert socket_ifname_env({}, "10.231.0.11", reach) == {"GLOO_SOCKET_IFNAME": "eth0",
                                                          "NCCL_SOCKET_IFNAME": "eth0"}
    assert socket_ifname_env({"GLOO_SOCKET_IFNAME": "ib0"}, "10.231.0.11", reach) == {
        "NCCL_SOCKET_IFNAME": "eth0"}
    assert socket_ifname_env({}, "127.0.0.1", reach) == {}   # one host: nothing to choose


def test_rank_entry_follows_the_topology_order():
    # dp 2 x pp 2 x tp 2, rank = (pipe * dp + data) * tp + tensor: 5 = (1 * 2 + 0) * 2 + 1
    assert rank_entry(Layout(dp=2, pp=2, tp=2), 5, 1, "node2") == {
        "rank": 5, "host": "node2", "local_rank": 1, "stage": 1, "tensor_rank": 1, "replica": 0}
    # 6 = (1 * 2 + 1) * 2 + 0
    assert rank_entry(Layout(dp=2, pp=2, tp=2), 6, 2, "node2")["replica"] == 1


def test_ranks_json_is_written_by_the_rank_that_completes_the_set(tmp_path):
    lay = Layout(dp=2, pp=1, tp=1)
    assert record_placement(tmp_path, lay, 1, 2, local_rank=0, host="node2") is None
    assert not (tmp_path / "ranks.json").exists()
    path = record_placement(tmp_path, lay, 0, 2, local_rank=0, host="node1")
    assert json.loads(path.read_text()) == [
        {"rank": 0, "host": "node1", "local_rank": 0, "stage": 0, "tensor_rank": 0, "replica": 0},
        {"rank": 1, "host": "node2", "local_rank": 0, "stage": 0, "tensor_rank": 0, "replica": 1}]


def test_a_lost_peer_is_recorded_where_the_job_body_reads_it(tmp_path, monkeypatch):
    from llmlaunch.launcher.liveness import record_lost

    monkeypatch.setenv("LLMLAUNCH_LOST_FILE", str(tmp_path / "lost.txt"))
    clause = "ranks 4, 5, 6, 7 on node2 stopped answering"
    assert record_lost(1, clause) == clause
    record_lost(0, clause)
    assert (tmp_path / "lost.txt").read_text().splitlines() == [f"rank 1: {clause}", f"rank 0: {clause}"]
