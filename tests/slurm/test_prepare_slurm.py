"""`data prepare --tasks 2 --slurm` on a two-host Slurm cluster (NODES=2 slurm/local-cluster.sh):
the scan and dedup stages run as array jobs of the same command on both hosts, and the output is
byte for byte what one process writes from the planted corpus."""
import subprocess
import sys

from planted_corpus import same_tree, write_planted_corpus
from slurm_cluster import local_cluster

from llmlaunch.data.prepare import PrepareConfig, prepare


def test_prepare_over_two_hosts_equals_one_process(tmp_path):
    inputs = write_planted_corpus(tmp_path / "in")
    prepare(PrepareConfig(inputs=[str(inputs)], out=tmp_path / "trained", vocab_size=1024,
                          progress=False))
    tokenizer = tmp_path / "trained" / "tokenizer.json"
    one = prepare(PrepareConfig(inputs=[str(inputs)], out=tmp_path / "one", tokenizer=tokenizer,
                                val_fraction=0.1, progress=False))
    assert one.manifest["removed"]["near_dup"] > 10 and one.manifest["removed"]["exact_dup"] > 10
    with local_cluster(2, "prepare") as (env, _):
        run = subprocess.run(
            [sys.executable, "-m", "llmlaunch", "data", "prepare", "--input", str(inputs), "--out",
             str(tmp_path / "two-hosts"), "--tokenizer", str(tokenizer), "--val-fraction", "0.1",
             "--tasks", "2", "--slurm", "--slurm-option=--exclusive"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        logs = "\n".join(p.read_text() for p in (tmp_path / ".two-hosts.work").glob("slurm-*.out")) \
            if (tmp_path / ".two-hosts.work").exists() else ""
        assert run.returncode == 0, run.stdout + run.stderr + logs
    assert "stage scan: Slurm job" in run.stdout and "(2 array tasks)" in run.stdout
    scans = [p.read_text() for p in (tmp_path / ".two-hosts.work").glob("slurm-scan-*.out")]
    hosts = {line.rsplit(" on ", 1)[1] for text in scans for line in text.splitlines()
             if line.startswith("data prepare: stage scan task")}
    assert hosts == {"node1", "node2"}, scans
