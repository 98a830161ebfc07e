"""A local Slurm cluster (slurm/local-cluster.sh) for one test module, and what it made.

Every cluster's state folder lies under STATE_ROOT, so that CI's clean-up (.ci/run) can stop every
cluster a test left behind with the script itself, never by process name."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from paths import REPO

LOCAL_CLUSTER = REPO / "slurm" / "local-cluster.sh"
STATE_ROOT = Path(os.environ.get("LLMLAUNCH_SLURM_ROOT", "/tmp/llmlaunch-slurm-tests"))


def require_slurm() -> None:
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged") if not shutil.which(tool)
               and not Path(f"/usr/sbin/{tool}").exists()]
    if missing or os.geteuid() != 0:
        pytest.fail(f"Slurm tests need root and {', '.join(missing) or 'the Slurm packages'}: run "
                    "tests/setup.sh, which installs them")


def job_env(state: Path) -> dict:
    """The environment for sbatch/srun: this cluster, and this interpreter's python3 first on PATH
    (the jobs' ranks run `python3 -m llmlaunch...`)."""
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        env.pop(key)
    return env


@contextmanager
def local_cluster(nodes: int = 1, name: str = "cluster"):
    """Start an N-host cluster in a fresh folder under STATE_ROOT; yields (env, state folder).
    Jobs are cancelled and the cluster stopped when the block ends, whatever happened."""
    require_slurm()
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=STATE_ROOT))
    env = job_env(state)
    try:
        subprocess.run([str(LOCAL_CLUSTER), "start", str(state)], check=True, timeout=90,
                       env=dict(env, NODES=str(nodes)))
        yield env, state
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, timeout=30, capture_output=True)
        subprocess.run([str(LOCAL_CLUSTER), "stop", str(state)], env=env, timeout=90)


def leftovers(state: Path) -> list[str]:
    """What a stopped cluster left behind: its namespaces, links and live daemons."""
    left = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += [f"namespace {line.split()[0]}" for line in netns.splitlines()
             if line.startswith("llml-")]
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
             if line.split(":")[1].strip().startswith("llml-")]
    for pid_file in state.glob("*.pid"):
        pid = pid_file.read_text().strip()
        if pid and Path(f"/proc/{pid}").exists():
            left.append(f"daemon {pid_file.name} pid {pid}")
    return left


def host_processes(host: str) -> list[int]:
    """Every process on one host of the local cluster: those in its network namespace."""
    ns = os.stat(f"/run/netns/llml-{host}").st_ino
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == ns:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def lose_host(state: Path, host: str) -> None:
    """SIGKILL a host of the local cluster: its slurmd, then every process in its namespace."""
    import signal

    slurmd = int((state / f"slurmd-{host}.pid").read_text())
    for pid in [slurmd] + [p for p in host_processes(host) if p != slurmd]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
