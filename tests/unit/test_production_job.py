"""`plan --emit` writes the job a cluster user would submit (issue 27): checkpoint interval from the
save time and a sourced failure rate, the stop signal from the save time, whole GPU nodes, and the
container or environment-setup variants."""
from __future__ import annotations

import math
import subprocess

import pytest
import yaml

from llmlaunch.cli import main
from llmlaunch.launcher import slurm
from llmlaunch.topology import resilience

pytestmark = pytest.mark.unit

PLAN_8B = ["plan", "--gpus", "256", "--model", "llama3-8b", "--gpu", "h100-80gb",
           "--tokens", "15e12"]


def test_failure_rate_and_young_daly_by_hand():
    # Llama 3 §3.3.4: 419 unexpected interruptions in 54 days on 16,384 GPUs
    assert resilience.gpu_mtbf_hours() == pytest.approx(54 * 24 * 16384 / 419)
    assert resilience.gpu_mtbf_hours() == pytest.approx(50_677.0, abs=0.5)
    assert resilience.job_mtbf_hours(50_677.0, 256) == pytest.approx(197.96, abs=0.01)
    # sqrt(2 * 3 s * 720,000 s) = sqrt(4.32e6) = 2078.5 s
    assert resilience.young_daly_interval_s(3.0, 720_000) == pytest.approx(2078.46, abs=0.01)
    assert resilience.default_fs_bytes_per_s(16384) == pytest.approx(2e12)
    assert resilience.default_fs_bytes_per_s(256) == pytest.approx(31.25e9)
    assert resilience.save_seconds(100e9, 25e9) == 4.0
    # stop: one step + two saves + the requeue margin, never under the 300 s floor
    assert resilience.stop_signal_seconds(1.5, 3.0) == 300
    assert resilience.stop_signal_seconds(20.0, 200.0) == math.ceil(20 + 400 + 60)


@pytest.fixture(scope="module")
def job_8b(tmp_path_factory):
    """The issue's 8B plan emitted plain, with --env-setup and with --container (one plan each)."""
    root = tmp_path_factory.mktemp("job8b")
    setup = root / "env.sh"
    setup.write_text("export LLMLAUNCH_TEST_SETUP=1\n")
    dirs = {}
    for name, extra in (("plain", []), ("env", ["--env-setup", str(setup)]),
                        ("container", ["--container", "nvcr.io#nvidia/pytorch:24.05-py3"])):
        dirs[name] = root / name
        assert main(PLAN_8B + extra + ["--emit", str(dirs[name])]) == 0
    return dirs


def test_the_8b_job_checkpoints_every_10_to_120_minutes_with_its_formula(job_8b):
    run = yaml.safe_load((job_8b["plain"] / "run.yaml").read_text())
    script = (job_8b["plain"] / "train.sbatch").read_text()
    interval = next(line for line in script.splitlines() if line.startswith("# interval = "))
    assert "sqrt(2 * save * MTBF_job) (Young 1974, Daly 2006)" in interval
    minutes = float(interval.split(" min = ")[0].rsplit("= ", 1)[1])
    assert 10 <= minutes <= 120
    step_s = float(interval.rsplit("steps of ", 1)[1].split(" s")[0])
    assert run["checkpoint"]["every"] == pytest.approx(minutes * 60 / step_s, rel=0.01)
    assert run["checkpoint"]["every"] > 50     # not the old every-50-steps default
    assert "# interval = sqrt(2 * save * MTBF_job)" in (job_8b["plain"] / "run.yaml").read_text()
    assert "419 interruptions in 54 days on 16,384 GPUs" in script
    # the time limit and a stop signal early enough to save
    assert "#SBATCH --time=02:00:00" in script and "#SBATCH --requeue" in script
    assert f"#SBATCH --signal=B:USR1@{run['slurm']['signal_seconds']}" in script
    # whole GPU nodes, the node's CPUs shared by its tasks
    assert "#SBATCH --exclusive" in script and "#SBATCH --mem=0" in script
    assert "SRUN_CPUS_PER_TASK=$(( SLURM_CPUS_ON_NODE / SLURM_NTASKS_PER_NODE ))" in script


def test_every_variant_passes_bash_n(job_8b):
    for run_dir in job_8b.values():
        assert subprocess.run(["bash", "-n", str(run_dir / "train.sbatch")]).returncode == 0


def test_env_setup_is_sourced_by_the_script_and_every_task(job_8b, tmp_path):
    script = (job_8b["env"] / "train.sbatch").read_text()
    run = yaml.safe_load((job_8b["env"] / "run.yaml").read_text())
    setup = run["slurm"]["env_setup"]
    assert setup.endswith("env.sh") and 'source "$ENV_SETUP"' in script
    assert script.index('source "$ENV_SETUP"') < script.index("exec python3 -m llmlaunch")
    section = type("S", (), {"container_image": "", "container_mounts": [], "env_setup": setup})
    cmd = slurm.srun_command(tmp_path / "o", "/usr/bin/python3", "m", ["a"], section, {})
    prefix = cmd[cmd.index("bash"):cmd.index("/usr/bin/python3")]
    assert prefix == ["bash", "-c", 'source "$0" && exec "$@"', setup]
    # the wrapper really sources, then runs the task's command
    out = subprocess.run(prefix + ["bash", "-c", "echo $LLMLAUNCH_TEST_SETUP"], capture_output=True,
                         text=True)
    assert out.stdout.strip() == "1"


def test_container_runs_the_ranks_in_the_image_with_the_run_dir_mounted(job_8b, tmp_path):
    run = yaml.safe_load((job_8b["container"] / "run.yaml").read_text())
    run_dir = str(job_8b["container"].resolve())
    assert run["slurm"]["container_image"] == "nvcr.io#nvidia/pytorch:24.05-py3"
    assert f"{run_dir}:{run_dir}" in run["slurm"]["container_mounts"]
    section = type("S", (), run["slurm"])
    cmd = slurm.srun_command(tmp_path / "o", "/host/python", "m", ["a"], section, {})
    assert "--container-image=nvcr.io#nvidia/pytorch:24.05-py3" in cmd
    assert f"--container-mounts={run_dir}:{run_dir}" in cmd
    assert "/host/python" not in cmd and cmd.count("python3") == 2  # the image's interpreter
    # dry run (a cluster without pyxis): the options are named, not passed
    options, _, note = slurm.task_launch(section, {slurm.CONTAINER_DRY_RUN: "1"})
    assert options == [] and "--container-image=nvcr.io#nvidia/pytorch:24.05-py3" in note


def test_fs_bandwidth_and_mtbf_flags_move_the_interval(tmp_path, capsys):
    assert main(PLAN_8B + ["--fs-gb-per-s", "0.5", "--mtbf-hours", "5000", "--emit",
                           str(tmp_path / "slow")]) == 0
    out = capsys.readouterr().out
    assert "at 0.5 GB/s (--fs-gb-per-s)" in out and "MTBF 5,000 h per GPU (--mtbf-hours)" in out
    slow = yaml.safe_load((tmp_path / "slow" / "run.yaml").read_text())
    # a 96 GB tag at 0.5 GB/s: ~193 s saves, hence a later stop signal than the 300 s floor
    assert slow["slurm"]["signal_seconds"] > 300
    assert main(PLAN_8B + ["--mtbf-hours", "0", "--emit", str(tmp_path / "bad")]) == 2
    assert "--mtbf-hours must be positive" in capsys.readouterr().err
    assert main(PLAN_8B + ["--env-setup", str(tmp_path / "missing.sh"), "--emit",
                           str(tmp_path / "bad")]) == 2
    assert "--env-setup" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_plan_and_cost_give_the_same_days_at_plans_mfu(capsys):
    """One MFU definition (topology/flops.py: run_model_flops): `cost` at the MFU `plan` estimated
    gives plan's wall-clock days, and prints 6 N D beside its model FLOPs."""
    import json

    assert main(PLAN_8B + ["--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    best = plan["candidates"][0]
    assert main(["cost", "--model", "llama3-8b", "--tokens", "15e12", "--gpus", "256", "--gpu",
                 "h100-80gb", "--mfu", repr(best["mfu"]), "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)
    assert cost["wall_days"] == pytest.approx(plan["horizon"]["wall_days"], rel=1e-9)
    assert cost["flops_6nd"] == pytest.approx(6 * 8_030_261_248 * 15e12)
    assert main(["cost", "--model", "llama3-8b", "--tokens", "15e12", "--gpus", "256", "--gpu",
                 "h100-80gb", "--mfu", repr(best["mfu"])]) == 0
    text = capsys.readouterr().out
    assert "beside it 6 N D = 6 x 8.03e+09 x 1.5e+13 = 7.23e+23 FLOPs" in text
    assert f"{plan['horizon']['wall_days']:,.1f} days wall clock" in text
    assert main(PLAN_8B) == 0      # plan's text prints both FLOPs figures too
    assert (f"model FLOPs {cost['flops']:.3g} (MFU's numerator, topology/flops.py); 6 N D = "
            f"{cost['flops_6nd']:.3g} beside it") in capsys.readouterr().out


INTERLEAVED = ["plan", "--gpus", "512", "--model", "megatron-1t", "--tp", "8", "--pp", "64",
               "--dp", "1", "--micro-batch", "1", "--zero", "0", "--recompute", "full",
               "--global-batch", "512", "--virtual-stages", "2"]


def test_the_bubble_formula_printed_is_the_one_computed_text_and_page(tmp_path, capsys):
    from llmlaunch.topology.step_time import bubble_formula, bubble_fraction

    assert bubble_formula(64, 512, 2) == "(p-1)/(v*m+p-1) with p=64, v=2, m=512 (interleaved)"
    assert bubble_formula(4, 8) == "(p-1)/(m+p-1) with p=4, m=8"
    page = tmp_path / "plan.html"
    assert main(INTERLEAVED + ["--report", str(page)]) == 0
    text = capsys.readouterr().out
    value = 63 / (2 * 512 + 63)          # 5.8%, not (p-1)/(m+p-1) = 11.0%
    assert bubble_fraction(64, 512, 2) == pytest.approx(value)
    line = f"bubble fraction {value:.1%} = (p-1)/(v*m+p-1) with p=64, v=2, m=512 (interleaved)"
    assert line in text
    html = page.read_text()
    assert f"<b>{value:.1%}</b><span>bubble (p-1)/(v*m+p-1) with p=64, v=2, m=512" in html


def test_mfu_step_time_and_horizon_agree_between_text_and_plan_page(tmp_path, capsys):
    import json
    import re

    page = tmp_path / "plan.html"
    assert main(PLAN_8B + ["--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    cand, horizon = best["candidates"][0], best["horizon"]
    assert main(PLAN_8B + ["--report", str(page)]) == 0
    text, html = capsys.readouterr().out, page.read_text()
    mfu = f"MFU {cand['mfu']:.1%}"
    assert f"{mfu} (model FLOPs / peak)" in text and f"per GPU, {mfu}</span>" in html
    assert f"<b>{cand['step_time_s']:.4g} s</b><span>step time" in html
    assert re.search(rf"step time {cand['step_time_s']:.2f} s \(bubble", text)
    # the horizon (--tokens) on the page, the text's figures
    days = f"{horizon['wall_days']:,.1f} days"
    assert f"{horizon['wall_days']:.1f} days on 256 GPUs" in text
    assert 'id="horizon"' in html and f"<b>{days}</b>" in html
    assert f"<b>{horizon['gpu_hours']:,.0f}</b><span>GPU-hours" in html
    assert f"<b>${horizon['cost_usd']:,.0f}</b><span>cost" in html


def test_estimate_only_layouts_are_marked_where_printed(capsys):
    assert main(["plan", "--gpus", "64", "--model", "llama3-8b", "--top", "10",
                 "--engine", "megatron-lm-2022"]) == 0
    text = capsys.readouterr().out
    table = text.split("top 10 by estimated throughput:")[1].split("best layout")[0]
    rows = [line for line in table.splitlines() if line[:1].isdigit()]
    assert rows and all(row.split()[0].endswith("*") for row in rows)
    assert "* estimate only (--emit refuses it): " in table


def test_deepspeed_ops_prebuilt_buildable_or_named_with_the_node_and_whats_missing():
    from llmlaunch.launcher.ops_check import deepspeed_ops_check, needed_ops, ops_verdict

    assert needed_ops(False, "none") == [] and needed_ops(True, "none") == ["fused_adam"]
    assert needed_ops(True, "optimizer") == ["cpu_adam"]
    tools = {"ninja": "/usr/bin/ninja", "c++ compiler": "/usr/bin/c++", "nvcc": None}
    assert ops_verdict(["fused_adam"], {"fused_adam": True}, tools, "n1") == (True, "fused_adam prebuilt")
    ok, detail = ops_verdict(["fused_adam"], {}, tools, "gpu-node-7")
    assert not ok and detail.startswith("fused_adam (DeepSpeed's FusedAdam (CUDA)) is not prebuilt "
                                        "and cannot be built on gpu-node-7: missing nvcc;")
    assert "DS_BUILD_FUSED_ADAM=1 pip install deepspeed" in detail
    ok, detail = ops_verdict(["cpu_adam"], {}, tools, "n1")
    assert ok and "cpu_adam JIT-built at the first start" in detail
    assert ops_verdict([], {}, {}, "n1") == (True, "none needed (torch's AdamW on CPU)")

def test_the_ops_check_looks_on_the_node_itself(monkeypatch, tmp_path):
    """This host as a GPU node with no compiler on PATH and no CUDA_HOME: DeepSpeed here has no
    prebuilt FusedAdam, so the check fails naming the node and the missing tools."""
    from llmlaunch.launcher.ops_check import build_tools, deepspeed_ops_check

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert build_tools()["nvcc"] is None and build_tools()["c++ compiler"] is None
    ok, detail = deepspeed_ops_check(True, "none", "this-host")
    assert not ok and "cannot be built on this-host: missing" in detail
    assert "c++ compiler" in detail and "nvcc" in detail
    # a wrapper that names an nvcc that is not there counts as missing: the tool must run
    (tmp_path / "nvcc").write_text("#!/bin/sh\nexec /no/such/cuda/bin/nvcc \"$@\"\n")
    (tmp_path / "nvcc").chmod(0o755)
    assert build_tools()["nvcc"] is None


def test_memory_headroom_keeps_memory_free_and_is_stated_in_defaults(capsys):
    import json

    base = ["plan", "--gpus", "8", "--model", "mistral-7b", "--cp", "1", "--json"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert any("memory headroom 0% (default" in note for note in plain["defaults"])
    tightest = max(c["memory_gib"]["total"] for c in plain["candidates"])
    capacity = plain["cluster"]["memory_gib"]
    assert tightest > 0.9 * capacity          # some fitting layout leaves under 10% free
    assert main(base + ["--memory-headroom", "0.1"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert all(c["memory_gib"]["total"] <= 0.9 * capacity for c in kept["candidates"])
    # the layouts that left under 10% free are gone from the plan (a heavier recompute of them,
    # pruned from the plain search as dominated, may take their place)
    layout_keys = ("dp", "pp", "tp", "cp", "ep", "micro_batch", "zero_stage", "offload", "recompute",
                   "sequence_parallel")
    tight = {tuple(c[k] for k in layout_keys) for c in plain["candidates"]
             if c["memory_gib"]["total"] > 0.9 * capacity}
    assert tight and not tight & {tuple(c[k] for k in layout_keys) for c in kept["candidates"]}
    assert main(base + ["--memory-headroom", "1"]) == 2
    assert "--memory-headroom is a fraction of GPU memory in [0, 1)" in capsys.readouterr().err


def test_show_rejected_lists_rejections_under_partial_pins(capsys):
    assert main(["plan", "--gpus", "8", "--model", "mistral-7b", "--tp", "2", "--top", "1",
                 "--show-rejected"]) == 0
    text = capsys.readouterr().out
    ruled = text.split("ruled out (")[1]
    rows = [line for line in ruled.splitlines()[1:] if line.startswith("  dp=")]
    assert rows and all(" tp=2" in row for row in rows)
    assert any("over memory by" in row for row in rows)


def test_params_with_arch_derives_that_familys_shape(capsys):
    import json

    assert main(["plan", "--params", "7e9", "--arch", "llama", "--gpus", "8", "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["name"] == "llama2-7b" and model["arch"] == "llama" and model["vocab"] == 32000
    assert main(["plan", "--params", "30e9", "--arch", "llama", "--gpus", "8", "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["arch"] == "llama" and model["vocab"] == 32000 and model["seq_len"] == 4096
    assert abs(model["params"] - 30e9) / 30e9 < 0.05


def test_a_time_limit_shorter_than_the_stop_signal_is_refused(tmp_path, capsys):
    from llmlaunch.launcher.emit import slurm_time_seconds

    assert [slurm_time_seconds(t) for t in ("30", "30:15", "02:00:00", "1-12", "1-12:30",
                                              "1-00:00:01")] == \
        [1800, 1815, 7200, 129600, 131400, 86401]
    assert main(PLAN_8B + ["--time", "00:05:00", "--emit", str(tmp_path / "short")]) == 2
    err = capsys.readouterr().err
    assert "--time 00:05:00 is not longer than the stop signal's 300 s" in err
    assert not (tmp_path / "short").exists()
