"""preflight.json -> planner figures (topology/measured_network.py) and `plan --network-from`."""
import json

import pytest

from llmlaunch.cli import main
from llmlaunch.cli.plan import plan_from_argv
from llmlaunch.topology.hardware import gpu
from llmlaunch.topology.measured_network import (allreduce_bus_gb_per_s, hockney_alpha_us,
                                                 host_groups, link_figures, preflight_document,
                                                 read_network)

# llama2-7b (untied head) on 4 nodes of 4: dp 2 and pp 2 both cross nodes, tp 4 stays inside one
PINNED = ["--model", "llama2-7b", "--gpus", "16", "--gpus-per-node", "4", "--tp", "4", "--pp", "2",
          "--dp", "2", "--micro-batch", "1", "--zero", "1", "--recompute", "full",
          "--global-batch", "16"]          # grad_accum 8


def write_doc(path, inter_bus=20.0, inter_latency_us=50.0, one_host=False):
    """A hand-written preflight.json: 2 hosts of 4 ranks (intra: 100 GB/s, 40 us over 4 ranks)."""
    links = {"intra_host": {"group_size": 4, "small_bytes": 4096, "large_bytes": 4194304,
                            "repeats": 10, "latency_us": 40.0, "bus_gb_per_s": 100.0}}
    if not one_host:
        links["inter_host"] = {"group_size": 2, "small_bytes": 4096, "large_bytes": 4194304,
                               "repeats": 10, "latency_us": inter_latency_us,
                               "bus_gb_per_s": inter_bus, "ranks": [0, 4]}
    doc = {"schema": 1, "date": "2026-12-06T04:00:00+00:00", "backend": "gloo", "device": "cpu",
           "hosts": ["a"] if one_host else ["a", "b"], "links": links, "absent": {}}
    path.write_text(json.dumps(doc))
    return str(path)


def test_bus_bandwidth_is_nccl_tests_formula():
    # 4 MiB over 4 ranks in 10 ms: 4194304 / 0.01 * 2*3/4 = 629145600 B/s
    assert allreduce_bus_gb_per_s(4194304, 4, 0.01) == pytest.approx(0.6291456, rel=1e-12)
    # 2 ranks: busbw = algbw
    assert allreduce_bus_gb_per_s(1e9, 2, 0.5) == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="2 or more ranks"):
        allreduce_bus_gb_per_s(1e9, 1, 0.5)


def test_alpha_inverts_the_ring_latency_term():
    assert hockney_alpha_us(600.0, 4) == pytest.approx(100.0)     # 600 / (2 * 3)
    assert hockney_alpha_us(50.0, 2) == pytest.approx(25.0)


def test_host_groups_and_leaders():
    assert host_groups(["a", "a", "b", "b"]) == ({"a": [0, 1], "b": [2, 3]}, [0, 2])
    assert host_groups(["b", "a", "b", "a"]) == ({"b": [0, 2], "a": [1, 3]}, [0, 1])


def test_document_one_host_has_no_inter_link_and_says_why():
    fig = link_figures(group_size=2, small_bytes=4096, large_bytes=4194304, repeats=10,
                       small_s=100e-6, large_s=0.01)
    assert fig["latency_us"] == pytest.approx(100.0)
    assert fig["bus_gb_per_s"] == pytest.approx(4194304 / 0.01 / 1e9)     # n = 2: busbw = algbw
    doc = preflight_document(hostnames=["h", "h"], backend="gloo", device="cpu", date="d",
                             intra={"h": fig}, inter=None, checks_passed=True)
    assert doc["schema"] == 1 and doc["ranks_per_host"] == {"h": [0, 1]}
    assert set(doc["links"]) == {"intra_host"}
    assert doc["absent"] == {"inter_host": "one host: no link between hosts to time"}
    # two hosts: the slower host's bandwidth, the higher latency
    slow = {**fig, "bus_gb_per_s": 0.1, "latency_us": 300.0}
    doc = preflight_document(hostnames=["h", "h", "g", "g"], backend="gloo", device="cpu",
                             date="d", intra={"h": fig, "g": slow}, inter=fig, checks_passed=True)
    assert doc["links"]["intra_host"]["bus_gb_per_s"] == 0.1
    assert doc["links"]["intra_host"]["latency_us"] == 300.0
    assert doc["links"]["inter_host"]["ranks"] == [0, 2] and doc["absent"] == {}


def test_reader_gives_planner_figures(tmp_path):
    net = read_network(write_doc(tmp_path / "p.json"))
    over = net.gpu_overrides(unmeasured_latency_us=7.0)
    assert over == {"intra_node_gb_per_s": 100.0, "collective_latency_us": pytest.approx(40 / 6),
                    "inter_node_gb_per_s": 20.0, "inter_node_latency_us": pytest.approx(25.0)}
    one = read_network(write_doc(tmp_path / "one.json", one_host=True))
    assert one.inter is None
    assert one.gpu_overrides(unmeasured_latency_us=7.0)["inter_node_latency_us"] == 7.0


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"),
    ("{not json", "not JSON"),
    (json.dumps({"schema": 2, "links": {}}), "not a preflight.json of schema 1"),
    (json.dumps({"schema": 1, "links": {}}), "measured no link"),
    (json.dumps({"schema": 1, "links": {"inter_host": {"group_size": 2, "latency_us": 5,
                                                       "bus_gb_per_s": -1}}}),
     "links.inter_host.bus_gb_per_s must be a positive number"),
    (json.dumps({"schema": 1, "links": {"intra_host": {"group_size": 1, "latency_us": 5,
                                                       "bus_gb_per_s": 1}}}),
     "links.intra_host.group_size must be an integer >= 2"),
])
def test_bad_file_is_one_clear_line(tmp_path, capsys, content, message):
    path = tmp_path / "preflight.json"
    if content is not None:
        path.write_text(content)
    assert main(["plan", *PINNED, "--network-from", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err


def test_plan_uses_measured_figures_and_says_so(tmp_path):
    inputs, _, _ = plan_from_argv([*PINNED, "--network-from", write_doc(tmp_path / "p.json")])
    g = inputs.cluster.gpu
    assert (g.intra_node_gb_per_s, g.inter_node_gb_per_s) == (100.0, 20.0)
    assert g.collective_latency_us == pytest.approx(40 / 6)
    assert g.inter_node_latency_s == pytest.approx(25e-6)
    assert g.allreduce_busbw == ()        # the catalog's NVLink curve is not this network's
    assert any(n.startswith("network measured by preflight") for n in inputs.defaults)
    # one host measured: inter-node stays the catalog's, bandwidth and latency
    inputs, _, _ = plan_from_argv([*PINNED, "--network-from",
                                   write_doc(tmp_path / "one.json", one_host=True)])
    catalog = gpu("a100-80gb")
    assert inputs.cluster.gpu.inter_node_gb_per_s == catalog.inter_node_gb_per_s
    assert inputs.cluster.gpu.inter_node_latency_s == catalog.collective_latency_s
    # a flag wins over the file
    inputs, _, _ = plan_from_argv([*PINNED, "--inter-node-gb-per-s", "5", "--network-from",
                                   write_doc(tmp_path / "p.json")])
    assert inputs.cluster.gpu.inter_node_gb_per_s == 5.0


def test_dp_and_pp_times_follow_the_measured_inter_node_figures(tmp_path):
    """dp 2 across nodes: 2 alpha + N / B (ring all-reduce, n = 2); pp 2 across nodes: per
    micro-batch one send of alpha + M / B, 8 micro-batches. Doubling B halves the byte terms;
    raising the latency from 50 to 250 us (alpha 25 -> 125 us) adds 2 x 100 us and 8 x 100 us."""
    def step(**kw):
        return plan_from_argv([*PINNED, "--network-from", write_doc(tmp_path / "p.json", **kw)])[2].step

    a, fast, slow = step(), step(inter_bus=40.0), step(inter_latency_us=250.0)
    alpha = 25e-6
    assert a.dp_comm_s - 2 * alpha == pytest.approx(2 * (fast.dp_comm_s - 2 * alpha), rel=1e-9)
    assert slow.dp_comm_s - a.dp_comm_s == pytest.approx(2 * 100e-6, rel=1e-9)
    assert a.pp_comm_s - 8 * alpha == pytest.approx(2 * (fast.pp_comm_s - 8 * alpha), rel=1e-9)
    assert slow.pp_comm_s - a.pp_comm_s == pytest.approx(8 * 100e-6, rel=1e-9)


def test_host_is_the_hostname_unless_llmlaunch_hostname_is_set():
    import socket

    from llmlaunch.launcher.hostnet import host_name

    assert host_name({"LLMLAUNCH_HOSTNAME": "node7"}) == "node7"
    assert host_name({}) == host_name({"LLMLAUNCH_HOSTNAME": ""}) == socket.gethostname()
