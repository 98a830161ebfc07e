"""An elastic job (`plan --emit --min-nodes 2` of a 3-host plan) on a three-host Slurm cluster on
this machine: a host is lost mid-run, the job comes back by itself on the two that remain (dp 3 ->
2, grad_accum 4 -> 6, the global batch of 24 kept, the checkpoint resharded) and its loss curve is
the one a single process trains with the same global batch."""
import json
import re
import time

from slurm_cluster import local_cluster, lose_host
from slurm_jobs import assert_losses_equal_one_process, emit, job_log, sbatch, steps_logged

# the host is lost after step 6, the job resumes from the step-4 checkpoint: 8 steps on the new
# layout after the reshard are enough to compare curves (each step on 2 hosts costs ~1 s)
STEPS = 12
PLAN = ["--gpu", "cpu", "--gpus", "12", "--gpus-per-node", "4", "--layers", "4", "--hidden", "64",
        "--heads", "4", "--vocab", "1024", "--seq-len", "64", "--dp", "3", "--pp", "2", "--tp", "2",
        "--precision", "fp32", "--global-batch", "24", "--micro-batch", "2", "--min-nodes", "2"]


def test_elastic_job_loses_a_host_and_finishes_on_two_with_the_same_curve(tmp_path):
    run_dir = tmp_path / "run"
    emit(run_dir, *PLAN, train__steps=STEPS, train__collective_timeout_s=15, checkpoint__every=4,
         data__allow_toy_corpus=True)   # a multi-host job on the shipped corpus must say so
    assert "#SBATCH --nodes=2-3" in (run_dir / "train.sbatch").read_text()
    with local_cluster(3, "elastic") as (env, state):
        proc, _ = sbatch(dict(env, LLMLAUNCH_PREFLIGHT="0"), run_dir)   # tested in test_multihost
        deadline = time.monotonic() + 300
        while steps_logged(run_dir) < 6:
            assert proc.poll() is None and time.monotonic() < deadline, job_log(run_dir)
            time.sleep(0.05)
        assert {r["host"] for r in json.loads((run_dir / "ranks.json").read_text())} == {
            "node1", "node2", "node3"}
        lose_host(state, "node3")
        assert proc.wait(timeout=500) == 0, job_log(run_dir)
    log = job_log(run_dir)
    assert re.search(r"lost a peer: rank \d+: ranks 8, 9, 10, 11 on node3 stopped answering", log), log
    assert ("elastic start on 2 host(s): dp=3 pp=2 tp=2 -> dp=2 pp=2 tp=2, grad_accum 4 -> 6 "
            "(global batch 24 kept)") in log, log
    assert "training finished" in log
    assert {r["host"] for r in json.loads((run_dir / "ranks.json").read_text())} == {"node1", "node2"}
    assert "resharded" in (run_dir / "logs" / "rank00000.log").read_text()
    assert_losses_equal_one_process(run_dir, tmp_path / "one", grad_accum=12, steps=STEPS)
