"""Every file and folder of a run directory, by name: the one place that spells them (standard
library only, so that launcher/, report/ and data/ may all import it).

    run.yaml               the run's config (`plan --emit` writes it; the default config path)
    run.effective.yaml     run.yaml with --set and the resolved precision, as rank 0 used it
    ds_config.json         the DeepSpeed config `plan --emit` wrote beside run.yaml (for reading)
    train.sbatch           the Slurm job `plan --emit` wrote
    metrics.jsonl          one record per step (launcher/metrics.py writes, metrics_file.py reads)
    validate.json          `llmlaunch validate --json`'s rows
    preflight.json         the network the preflight measured (`plan --network-from` reads it)
    ranks.json             where every rank of the latest start ran (.ranks/ while it is written)
    stopped.json           where the ranks stopped for a signal: {step, signal, checkpoint}
    stop-request.json      the supervisor asking the ranks to stop (rank 0 reads it every step)
    skipped.json           the steps whose batches were consumed without an update (the guard:
                           launcher/guard.py); a requeued run skips them too
    owner.lock             the supervisor that owns the directory (launcher/run_lock.py)
    starts.jsonl           one record per start of the run: from which step, to which, how it ended
    checkpoints/           checkpoint.dir's default (the tags inside belong to the checkpoint store)
    data/                  the shipped corpus, prepared for this run when data.path is empty
    logs/                  rankNNNNN.log per rank; under Slurm srun's per-task output
                           (train-JOB.START-TASK.out, preflight-JOB-TASK.out) and
                           lost-JOB.START.txt (who stopped answering when a start lost a peer)
    tensorboard/           the same scalars as metrics.jsonl, when tensorboard is installed
"""
from __future__ import annotations

from pathlib import Path

RUN_CONFIG = "run.yaml"
EFFECTIVE_CONFIG = "run.effective.yaml"
DS_CONFIG = "ds_config.json"
SBATCH = "train.sbatch"
METRICS = "metrics.jsonl"
VALIDATE = "validate.json"
PREFLIGHT = "preflight.json"
RANKS = "ranks.json"
RANKS_DIR = ".ranks"
STOPPED = "stopped.json"
STOP_REQUEST = "stop-request.json"
SKIPPED = "skipped.json"
OWNER_LOCK = "owner.lock"
STARTS = "starts.jsonl"
CHECKPOINTS = "checkpoints"
DATA = "data"
LOGS = "logs"
TENSORBOARD = "tensorboard"


def rank_log(run_dir: Path, rank: int) -> Path:
    """RUN_DIR/logs/rankNNNNN.log: one rank's log (tracebacks go here, one line to stderr)."""
    return Path(run_dir) / LOGS / f"rank{rank:05d}.log"


def slurm_start_name(job_id: str, start: int) -> str:
    """'JOB.START': names the files of one start of a Slurm job (every requeue is a new start)."""
    return f"{job_id}.{start}"


def train_task_output(run_dir: Path, job_id: str, start: int) -> Path:
    """srun's --output pattern for the training ranks of one start (%t: the task number)."""
    return Path(run_dir) / LOGS / f"train-{slurm_start_name(job_id, start)}-%t.out"


def preflight_task_output(run_dir: Path) -> Path:
    """srun's --output pattern for the preflight tasks (%j: the job id, %t: the task number)."""
    return Path(run_dir) / LOGS / "preflight-%j-%t.out"


def lost_peer_file(run_dir: Path, job_id: str, start: int) -> Path:
    """Where the ranks of one start write who stopped answering (launcher/liveness.py)."""
    return Path(run_dir) / LOGS / f"lost-{slurm_start_name(job_id, start)}.txt"
