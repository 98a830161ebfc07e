"""The supervisor (launcher/job.py) under Slurm, on a one-host cluster on this machine: what each
kind of stop does to a running job, told apart from Slurm's own record of the job.

One job goes through all of them, and it is a train.sbatch in the format `plan --emit` wrote before
the supervisor (its bash finds launcher/jobs/slurm_job.sh and execs it), so files of that format
still start: the time-limit signal (`--signal=B:USR1@S`, brought forward with `scontrol update
TimeLimit`) and `scontrol requeue` and preemption each checkpoint, requeue and resume; `scancel`
then checkpoints and ends it, not requeued."""
import re
import shlex
import subprocess
import time

import pytest
from slurm_cluster import local_cluster
from slurm_jobs import emit, job_log, steps_logged
from train_job import losses

PLAN = ["--gpu", "cpu", "--gpus", "4", "--gpus-per-node", "4", "--layers", "4", "--hidden", "64",
        "--heads", "4", "--vocab", "1024", "--seq-len", "64", "--dp", "1", "--pp", "2", "--tp", "2",
        "--precision", "fp32", "--global-batch", "4", "--micro-batch", "2"]

# What `plan --emit` of llmlaunch 0.1 (before the supervisor) wrote after the #SBATCH lines
OLD_BODY = """RUN_DIR={run_dir}
trap 'LLMLAUNCH_EARLY_STOP=USR1' USR1
trap 'LLMLAUNCH_EARLY_STOP=TERM' TERM
# the job body shipped with llmlaunch: checks, preflight, srun of the ranks, requeue
JOB="$(python3 -c 'from llmlaunch.launcher.emit import JOB_BODY; print(JOB_BODY)')" || exit 2
export LLMLAUNCH_EARLY_STOP="${{LLMLAUNCH_EARLY_STOP:-}}"
exec bash "$JOB" "$RUN_DIR/run.yaml" "$RUN_DIR"
"""


def old_format_sbatch(run_dir) -> None:
    """Replace the emitted train.sbatch's body with the old one (its #SBATCH lines are unchanged)."""
    path = run_dir / "train.sbatch"
    head = [line for line in path.read_text().splitlines() if line.startswith("#")]
    path.write_text("\n".join(head) + "\n" + OLD_BODY.format(run_dir=shlex.quote(str(run_dir))))


def scontrol(env, *args):
    subprocess.run(["scontrol", *args], env=env, check=True, timeout=30, capture_output=True)


def queued(env, job) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], env=env, capture_output=True,
                          text=True, timeout=30).stdout.strip()


class Watch:
    """The job's log and metrics, waited on with a deadline."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def until(self, what, predicate, limit_s=240):
        deadline = time.monotonic() + limit_s
        while not predicate():
            assert time.monotonic() < deadline, f"no {what}:\n{job_log(self.run_dir)[-4000:]}"
            time.sleep(0.1)

    def log_count(self, text) -> int:
        return job_log(self.run_dir).count(text)

    def start_trains(self, restart: int) -> int:
        """Start `restart` of the job runs and has trained a step (the last stop saved the last
        step logged, so a new line is a step of this start); the step."""
        self.until(f"restart {restart}", lambda: self.log_count(f" restart {restart}:") == 1)
        before = steps_logged(self.run_dir)
        self.until(f"a step of restart {restart}", lambda: steps_logged(self.run_dir) > before)
        return steps_logged(self.run_dir)


@pytest.fixture(scope="module")
def slurm():
    with local_cluster(1, "supervisor") as (env, _state):
        yield env


def test_each_kind_of_stop_does_what_a_slurm_user_expects(slurm, tmp_path):
    run_dir = tmp_path / "run"
    emit(run_dir, *PLAN, train__steps=100000, checkpoint__every=0)
    old_format_sbatch(run_dir)
    env = dict(slurm, LLMLAUNCH_PREFLIGHT="0")   # preflight: test_slurm.py
    proc = subprocess.Popen(["sbatch", "--parsable", str(run_dir / "train.sbatch")], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, text=True)
    job = proc.communicate(timeout=30)[0].strip()
    watch = Watch(run_dir)
    try:
        # 1. the time-limit signal: 300 s before the end (#SBATCH --signal=B:USR1@300), brought to
        #    now by shortening the limit; the supervisor checkpoints and requeues
        step = watch.start_trains(0)
        scontrol(env, "update", f"JobId={job}", "TimeLimit=1")
        watch.until("the requeue", lambda: watch.log_count(f"; requeueing job {job}") == 1)
        scontrol(env, "update", f"JobId={job}", "TimeLimit=120")
        log = job_log(run_dir)
        assert re.search(rf"SIGUSR1 received; Slurm's record of job {job}: JobState=RUNNING .*-> "
                         "batch signal", log), log
        first_stop = int(re.search(r"stopped \(SIGUSR1\) after step (\d+), checkpoint step0*\1; "
                                   rf"requeueing job {job}", log)[1])
        assert first_stop >= step
        # 2. scontrol requeue: Slurm requeues the job itself; the ranks checkpoint first
        step = watch.start_trains(1)
        scontrol(env, "requeue", job)
        watch.until("Slurm's requeue", lambda: watch.log_count(f"Slurm requeued job {job} itself") == 1)
        # 3. preemption by a job of the higher-priority partition (PreemptMode=REQUEUE)
        step = watch.start_trains(2)
        subprocess.run(["sbatch", "-p", "urgent", "--exclusive", "-n", "8", "-o", "/dev/null",
                        "--wrap", "sleep 1"], env=env, check=True, timeout=30, capture_output=True)
        watch.until("the preemption", lambda: watch.log_count(f"Slurm requeued job {job} itself") == 2)
        assert "DUE TO PREEMPTION" in job_log(run_dir)
        # 4. scancel: checkpoint, and the job ends
        step = watch.start_trains(3)
        subprocess.run(["scancel", job], env=env, check=True, timeout=30)
        watch.until("the job's end", lambda: queued(env, job) == "", limit_s=120)
    finally:
        subprocess.run(["scancel", job], env=env, timeout=30)
    log = job_log(run_dir)
    cancelled = re.search(rf"job {job} cancelled \(scancel\): stopped after step (\d+), checkpoint "
                          r"step(\d+); not requeued", log)
    assert cancelled and int(cancelled[1]) == int(cancelled[2]) >= step, log
    assert " restart 4:" not in log and "Traceback" not in log
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{int(cancelled[1]):08d}"
    resumed = [int(s) for s in re.findall(r"resumed from \S+ \(step (\d+)\)",
                                          (run_dir / "logs" / "rank00000.log").read_text())]
    assert len(resumed) == 3 and resumed[0] == first_stop and resumed == sorted(resumed)
    steps = [s for s, _ in losses(run_dir)]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] == int(cancelled[1])


def test_a_failed_jobs_reason_is_in_its_own_log(slurm, tmp_path):
    """The ranks fail (an init_hf directory that does not exist): slurm-JOB.out says why, in the
    supervisor's one line, not only the ranks' outputs under logs/."""
    run_dir = tmp_path / "run"
    emit(run_dir, *PLAN, train__steps=2, checkpoint__init_hf=str(tmp_path / "no-such-model"))
    proc = subprocess.run(["sbatch", "--wait", str(run_dir / "train.sbatch")], cwd=tmp_path,
                          env=dict(slurm, LLMLAUNCH_PREFLIGHT="0"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    [line] = [l for l in job_log(run_dir).splitlines() if "training failed" in l]
    assert re.match(r"llmlaunch: error: training failed \(exit 1\): error on rank \d: .*no-such-model",
                    line), line
    assert line.endswith(f"; logs in {run_dir / 'logs'}")
