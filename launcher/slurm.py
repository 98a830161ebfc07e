"""Slurm as the supervisor reads and drives it (Slurm 22.05's commands, no library): the allocation
from the batch step's environment, the job's record, how a stop came about, requeue, and the srun
command lines of the preflight and the ranks.

How a stop came about (`classify_stop`), from what the batch step sees when its signal arrives
(measured on the local cluster, docs/launch.md "Signals"): the signal's sender is the batch step's
slurmstepd whatever the cause, so only the job's record tells them apart.

| cause | signal to the batch step | `scontrol show job` then |
| --- | --- | --- |
| `scancel JOB` | SIGCONT, SIGTERM | JobState=COMPLETING, Restarts unchanged, Reason=None |
| `scontrol requeue JOB`, preemption (PreemptMode=REQUEUE) | SIGCONT, SIGTERM | JobState=COMPLETING, Restarts one more than this start's SLURM_RESTART_COUNT |
| the time limit | SIGCONT, SIGTERM | JobState=COMPLETING, Reason=TimeLimit |
| `--signal=B:USR1@S` before the time limit, `scancel --signal=SIG --batch` | that signal | JobState=RUNNING |

Every task of the job gets the SIGTERM too (from its own step's slurmstepd), and SIGKILL KillWait
seconds later. `scontrol requeue` succeeds on a cancelled job that is still completing (which is how
llmlaunch 0.1's body turned scancel into a requeue), so the supervisor asks first.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .outcome import BATCH_SIGNAL, CANCELLED, REQUEUED_BY_SLURM, TIME_LIMIT, UNKNOWN

SCONTROL_TIMEOUT_S = 30


@dataclass(frozen=True)
class Allocation:
    """The batch step's view of its job (SLURM_* variables)."""

    job_id: str
    restart: int               # SLURM_RESTART_COUNT: 0 on the first start
    ntasks: int
    nodes: int
    nodelist: str
    tasks_per_node: int
    submit_dir: str

    @classmethod
    def from_env(cls, environ) -> "Allocation":
        try:
            ntasks, nodes = int(environ["SLURM_NTASKS"]), int(environ.get("SLURM_JOB_NUM_NODES", 1))
            return cls(job_id=environ["SLURM_JOB_ID"],
                       restart=int(environ.get("SLURM_RESTART_COUNT") or 0), ntasks=ntasks,
                       nodes=nodes, nodelist=environ.get("SLURM_JOB_NODELIST", ""),
                       tasks_per_node=tasks_per_node(environ.get("SLURM_NTASKS_PER_NODE", ""),
                                                     ntasks, nodes),
                       submit_dir=environ.get("SLURM_SUBMIT_DIR", ""))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not inside a Slurm batch job with tasks (SLURM_JOB_ID, SLURM_NTASKS: "
                             f"{exc}): submit with sbatch, or run `llmlaunch train` here") from None


def tasks_per_node(value: str, ntasks: int, nodes: int) -> int:
    """SLURM_NTASKS_PER_NODE ('4', or '4(x2)' when Slurm lists it per node), else ntasks / nodes."""
    match = re.match(r"^(\d+)", value or "")
    return int(match.group(1)) if match else max(1, ntasks // max(1, nodes))


def hostnames(nodelist: str) -> list[str]:
    """The hosts of a Slurm node list ('node[1-3]'), in Slurm's order (`scontrol show hostnames`)."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                         text=True, timeout=SCONTROL_TIMEOUT_S)
    names = out.stdout.split()
    if out.returncode != 0 or not names:
        raise ValueError(f"`scontrol show hostnames {nodelist}` failed: "
                         f"{(out.stderr or out.stdout).strip() or 'no hosts'}")
    return names


def parse_job_record(text: str) -> dict[str, str]:
    """`scontrol show job -o JOB`'s Key=Value pairs (values without spaces: the keys read here)."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(\S*)", text))


def job_record(job_id: str) -> tuple[dict[str, str] | None, str]:
    """(the job's record, '') or (None, why it could not be read)."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                             text=True, timeout=SCONTROL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    record = parse_job_record(out.stdout) if out.returncode == 0 else {}
    if "JobState" not in record:
        return None, (out.stderr or out.stdout).strip() or f"scontrol exit {out.returncode}"
    return record, ""


def classify_stop(record: dict[str, str] | None, restart: int) -> str:
    """How the stop whose signal just came about, from the job's record (the module docstring's
    table): CANCELLED, REQUEUED_BY_SLURM, TIME_LIMIT, BATCH_SIGNAL or UNKNOWN."""
    if record is None:
        return UNKNOWN
    state, reason = record.get("JobState", ""), record.get("Reason", "")
    try:
        if int(record.get("Restarts", restart)) > restart:
            return REQUEUED_BY_SLURM
    except ValueError:
        pass
    if state in ("RUNNING", "CONFIGURING"):
        return BATCH_SIGNAL
    if reason == "TimeLimit" or state == "TIMEOUT":
        return TIME_LIMIT
    if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED"):
        return REQUEUED_BY_SLURM
    if state in ("COMPLETING", "CANCELLED") and reason in ("None", ""):
        return CANCELLED
    return UNKNOWN


def requeue(job_id: str) -> str:
    """`scontrol requeue JOB`; '' when done, else what scontrol said."""
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True,
                         timeout=SCONTROL_TIMEOUT_S)
    return "" if out.returncode == 0 else (out.stderr or out.stdout).strip() or "failed"


def shrink(job_id: str, nodes: int, tasks: int) -> str:
    """Ask a requeued job for `nodes` hosts and `tasks` tasks (Slurm keeps a job's task count from
    its first start through a requeue); '' when done, else what scontrol said."""
    out = subprocess.run(["scontrol", "update", f"JobId={job_id}", f"NumNodes={nodes}",
                          f"NumTasks={tasks}"], capture_output=True, text=True,
                         timeout=SCONTROL_TIMEOUT_S)
    return "" if out.returncode == 0 else (out.stderr or out.stdout).strip() or "failed"


def first_failure(output_pattern: Path) -> str:
    """The first error line a rank printed in the srun outputs of a start (its --output pattern,
    '%t' the task), preferring one that is not only about another rank having gone; '' if none."""
    lines = []
    for path in sorted(output_pattern.parent.glob(output_pattern.name.replace("%t", "*"))):
        lines += [line.strip() for line in path.read_text(errors="replace").splitlines()
                  if line.startswith(("llmlaunch: error", "llmlaunch: preflight error"))]
    causes = [line for line in lines if "stopped answering" not in line]
    return ((causes or lines or [""])[0]).removeprefix("llmlaunch: ")


# What every task of a job gets unless the job's environment sets it (docs/launch.md, "The
# supervisor"): fabric settings beyond these are the cluster's ("The emitted job").
TASK_ENV_DEFAULTS = {"OMP_NUM_THREADS": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
                     "NCCL_DEBUG": "WARN"}
CONTAINER_DRY_RUN = "LLMLAUNCH_CONTAINER_DRY_RUN"
CONTAINER_PYTHON = "python3"   # the image's interpreter, not the host supervisor's


def task_launch(section, environ) -> tuple[list[str], list[str], str]:
    """(srun options, command prefix, note) that run.yaml's slurm section adds to every task:
    pyxis's --container-image/--container-mounts for `container_image`, and `bash -c 'source
    FILE && exec ...'` for `env_setup` (each task sources it on its own node). With
    LLMLAUNCH_CONTAINER_DRY_RUN=1 the container options are named in `note` and left off: the
    tasks run on the host (for a cluster without pyxis, docs/launch.md)."""
    options, prefix, note = [], [], ""
    if section is not None and section.container_image:
        options = [f"--container-image={section.container_image}"]
        if section.container_mounts:
            options.append(f"--container-mounts={','.join(section.container_mounts)}")
        if environ.get(CONTAINER_DRY_RUN) == "1":
            note = f"container dry run ({CONTAINER_DRY_RUN}=1): srun would get {' '.join(options)}"
            options = []
    if section is not None and section.env_setup:
        prefix = ["bash", "-c", 'source "$0" && exec "$@"', section.env_setup]
    return options, prefix, note


def srun_command(output: Path, python: str, module: str, module_args: list[str],
                 section=None, environ=None) -> list[str]:
    """srun of one task per rank: each task sets its network interface variables on its own host
    (launcher/hostnet.py) and execs `python -m module ...`. --kill-on-bad-exit: a dead rank ends
    the step. `section`: run.yaml's slurm section (container, env_setup: task_launch)."""
    options, prefix, _ = task_launch(section, environ or {})
    if options:
        python = CONTAINER_PYTHON
    return ["srun", "--kill-on-bad-exit=1", f"--output={output}", *options, *prefix,
            python, "-m", "llmlaunch.launcher.hostnet", "exec", "--",
            python, "-m", module, *module_args]
