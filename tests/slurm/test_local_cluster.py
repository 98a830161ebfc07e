"""slurm/local-cluster.sh: NODES=N hosts on this machine, one network namespace, hostname and slurmd
per host (tests/helpers/slurm_cluster.py); start, run a task on every host, stop, nothing left."""
import subprocess
from pathlib import Path

import pytest

from slurm_cluster import STATE_ROOT, leftovers, local_cluster


def daemon_pids(state: Path) -> dict[str, int]:
    files = [*state.glob("*.pid"), Path("/run/munge/munged.pid")]
    return {f.name: int(f.read_text()) for f in files if f.exists()}


@pytest.mark.parametrize("nodes", [2, 3])
def test_cluster_of_n_hosts_starts_runs_on_every_host_and_stops_clean(nodes):
    with local_cluster(nodes, f"hosts{nodes}") as (env, state):
        pids = daemon_pids(state)
        assert sorted(pids) == sorted([f"slurmd-node{i}.pid" for i in range(1, nodes + 1)]
                                      + ["slurmctld.pid", "munged.pid"])
        out = subprocess.run(["srun", f"-N{nodes}", f"-n{nodes}", "python3", "-c",
                              "import os, socket; h = socket.gethostname(); "
                              "print(os.environ['SLURM_PROCID'], h, socket.gethostbyname(h))"],
                             env=env, capture_output=True, text=True, timeout=60, check=True).stdout
        seen = sorted(tuple(line.split()) for line in out.splitlines())
        assert seen == [(str(i), f"node{i + 1}", f"10.231.0.{11 + i}") for i in range(nodes)]
    assert leftovers(state) == []
    assert [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()] == []


def test_stop_after_a_failed_start_removes_only_what_start_made():
    """A namespace the script did not make (llml-node2, as if left by someone else) fails the start
    half-way; stop then removes the bridge, node1's namespace and link, and the daemons, not it."""
    subprocess.run(["ip", "netns", "add", "llml-node2"], check=True)
    try:
        with pytest.raises(subprocess.CalledProcessError):
            with local_cluster(2, "failed") as _:
                pass
        state = max(STATE_ROOT.glob("failed-*"), key=lambda p: p.stat().st_mtime)
        assert leftovers(state) == ["namespace llml-node2"]
    finally:
        subprocess.run(["ip", "netns", "del", "llml-node2"], check=True)
