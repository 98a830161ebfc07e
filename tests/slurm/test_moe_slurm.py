"""A Mixture-of-Experts job as `plan --emit` writes it, on a two-host Slurm cluster on this machine
(slurm/local-cluster.sh): a tiny Mixtral (4 experts, top-2) at dp 2 x tp 2 with ep 2, 2 ranks per
host, so each expert group [0, 2], [1, 3] crosses the hosts and its all-to-alls go between them.

It equals one process (fp32, relative 1e-5); metrics.jsonl carries the router's losses and each
layer's load per expert; `checkpoint inspect` shows ep; and its step-K checkpoint, saved at ep 2,
resumes in one process (ep 1) with the uninterrupted job's losses.
"""
import json
import shutil
import subprocess
import sys

import pytest
from slurm_cluster import local_cluster
from slurm_jobs import assert_losses_equal_one_process, emit, job_log, sbatch
from train_job import Job, losses

STEPS, K = 6, 3
TINY_MIXTRAL = {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 96,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 1024, "max_position_embeddings": 64, "num_local_experts": 4,
                "num_experts_per_tok": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "hidden_act": "silu", "tie_word_embeddings": False, "router_aux_loss_coef": 0.02}
PLAN = ["--gpu", "cpu", "--gpus", "4", "--gpus-per-node", "2", "--seq-len", "64", "--dp", "2",
        "--pp", "1", "--tp", "2", "--ep", "2", "--precision", "fp32", "--global-batch", "16",
        "--micro-batch", "2"]


@pytest.fixture(scope="module")
def moe_job(tmp_path_factory):
    """The emitted MoE job run to the end on two hosts: (run dir, plan's printed report)."""
    work = tmp_path_factory.mktemp("moe")
    config = work / "config.json"
    config.write_text(json.dumps(TINY_MIXTRAL))
    run_dir = work / "run"
    report = emit(run_dir, *PLAN, "--hf-config", str(config), train__steps=STEPS,
                  checkpoint__every=K, checkpoint__keep=5, data__allow_toy_corpus=True)
    with local_cluster(2, "moe") as (env, _):
        proc, _ = sbatch(env, run_dir)
        assert proc.wait(timeout=400) == 0, job_log(run_dir)
    return run_dir, report


def test_emitted_moe_job_runs_on_two_hosts_as_one_process_would(moe_job, tmp_path):
    run_dir, report = moe_job
    assert "experts split ep=2" in report and "training finished" in job_log(run_dir)
    assert "ep: 2" in (run_dir / "run.yaml").read_text()
    ranks = {r["rank"]: r["host"] for r in json.loads((run_dir / "ranks.json").read_text())}
    for group in ([0, 2], [1, 3]):                 # the planner's expert groups cross the hosts
        assert ranks[group[0]] != ranks[group[1]]
    assert_losses_equal_one_process(run_dir, tmp_path / "one", grad_accum=8, steps=STEPS)


def test_metrics_carry_the_router_losses_and_the_load_per_expert(moe_job):
    run_dir, _ = moe_job
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        assert record["aux_loss"] > 0 and record["dropped_fraction"] == 0.0
        assert [entry["layer"] for entry in record["expert_load"]] == [0, 1]
        for entry in record["expert_load"]:
            assert 0 < entry["min_share"] <= 0.25 <= entry["max_share"] < 1
            assert entry["max_over_mean"] == pytest.approx(4 * entry["max_share"])
    assert "aux " in (run_dir / "logs" / "rank00000.log").read_text()


def test_checkpoint_inspect_shows_ep(moe_job):
    run_dir, _ = moe_job
    out = subprocess.run([sys.executable, "-m", "llmlaunch", "checkpoint", "inspect",
                          str(run_dir / "checkpoints"), "--json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    tags = json.loads(out.stdout)["tags"]
    assert [t["layout"] for t in tags] == [{"dp": 2, "pp": 1, "tp": 2, "ep": 2}] * 2


def test_ep2_checkpoint_resumes_at_ep1_with_the_uninterrupted_losses(moe_job, tmp_path):
    run_dir, _ = moe_job
    target = tmp_path / "ep1"
    tag = f"step{K:08d}"
    shutil.copytree(run_dir / "checkpoints" / tag, target / "checkpoints" / tag)
    (target / "checkpoints" / "latest").write_text(tag)
    shutil.copytree(run_dir / "data", target / "data")
    job = Job(target, "layout.dp=1", "layout.tp=1", "layout.ep=1", "layout.grad_accum=8",
              config=run_dir / "run.yaml", nproc=1)
    assert job.wait(timeout=300) == 0, job.output()[-3000:]
    resumed, uninterrupted = losses(target), losses(run_dir)[K:]
    assert [s for s, _ in resumed] == list(range(K + 1, STEPS + 1))
    assert [v for _, v in resumed] == pytest.approx([v for _, v in uninterrupted], rel=1e-5)
