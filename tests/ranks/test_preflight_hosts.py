"""Preflight across hosts on one machine (gloo): ranks that stand for two hosts measure both link
kinds; a real one-host run measures inside the host only and says why there is no inter-host link."""
import json
import os
import signal
import subprocess
import sys

from paths import HELPERS, TINY_CONFIG  # tests/helpers (conftest puts it on sys.path)
from rank_harness import run_ranks

from llmlaunch.topology.measured_network import read_network


def positive_link(link, size):
    assert link["group_size"] == size
    assert link["bus_gb_per_s"] > 0 and link["latency_us"] > 0
    assert link["small_bytes"] == 4096 and link["large_bytes"] == 4 * 2**20 and link["repeats"] == 10


def test_two_hosts_of_two_ranks_measure_both_link_kinds(tmp_path):
    run_dir = tmp_path / "run"        # tiny-cpu: dp 2 x pp 2 = 4 ranks
    run = run_ranks(HELPERS / "preflight_driver.py", 4, timeout_s=240, env={"RANKS_PER_HOST": "2"},
                    args=["--config", TINY_CONFIG, "--run-dir", run_dir]).check()
    assert "preflight: all ranks passed" in run.output
    doc = json.loads((run_dir / "preflight.json").read_text())
    assert doc["schema"] == 1 and doc["backend"] == "gloo" and doc["checks_passed"] is True
    assert doc["hosts"] == ["host0", "host1"]
    assert doc["ranks_per_host"] == {"host0": [0, 1], "host1": [2, 3]}
    assert set(doc["links"]) == {"intra_host", "inter_host"} and doc["absent"] == {}
    positive_link(doc["links"]["intra_host"], 2)
    assert set(doc["links"]["intra_host"]["per_host"]) == {"host0", "host1"}
    positive_link(doc["links"]["inter_host"], 2)
    assert doc["links"]["inter_host"]["ranks"] == [0, 2]
    net = read_network(run_dir / "preflight.json")      # what plan --network-from takes
    assert net.intra is not None and net.inter is not None and net.hosts == 2


def test_one_real_host_measures_intra_only(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("LLMLAUNCH_HOSTNAME", None)
    proc = subprocess.Popen([sys.executable, "-m", "llmlaunch", "preflight", "--config", TINY_CONFIG,
                             "--run-dir", run_dir, "--nproc", "2", "--set", "layout.pp=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out[-3000:]
    doc = json.loads((run_dir / "preflight.json").read_text())
    assert len(doc["hosts"]) == 1 and doc["world_size"] == 2
    assert set(doc["links"]) == {"intra_host"}
    positive_link(doc["links"]["intra_host"], 2)
    assert doc["absent"] == {"inter_host": "one host: no link between hosts to time"}
    assert "inter_host: absent (one host: no link between hosts to time)" in out
