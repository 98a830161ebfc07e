"""The command line as a user types it: outputs, JSON schema, errors, emitted files."""
import json
import os
import subprocess
import sys

import pytest

from llmlaunch.cli import main

CANDIDATE_KEYS = {"dp", "pp", "tp", "micro_batch", "grad_accum", "global_batch", "zero_stage",
                  "recompute", "fits", "memory_gib", "bubble_fraction", "step_time_s", "tokens_per_s",
                  "tflops_per_gpu", "mfu"}


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "llmlaunch", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


def plan_json(capsys, *args):
    assert main(["plan", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_schema(capsys):
    out = plan_json(capsys, "--gpus", "1024", "--params", "175e9")
    assert set(out["model"]) >= {"params", "layers", "hidden", "heads", "kv_heads", "ffn_hidden",
                                 "vocab", "seq_len"}
    assert out["model"]["layers"] == 96 and out["model"]["hidden"] == 12288 and out["model"]["heads"] == 96
    assert out["cluster"] == {**out["cluster"], "gpus": 1024, "gpus_per_node": 8, "gpu": "a100-80gb"}
    assert out["candidates"]
    for cand in out["candidates"]:
        assert set(cand) >= CANDIDATE_KEYS
        assert set(cand["memory_gib"]) >= {"weights", "gradients", "optimizer", "activations", "total"}
        assert cand["dp"] * cand["pp"] * cand["tp"] == 1024
        assert cand["global_batch"] == cand["micro_batch"] * cand["grad_accum"] * cand["dp"]
        assert cand["fits"] is True
    totals = [c["tokens_per_s"] for c in out["candidates"]]
    assert totals[0] >= max(totals) / 1.0101


def test_plan_text_report_has_the_topology_memory_and_time(capsys):
    assert main(["plan", "--gpus", "64", "--model", "llama2-13b", "--top", "3"]) == 0
    text = capsys.readouterr().out
    for needle in ("best layout", "tensor   groups", "pipeline groups", "data     groups", "node 0:",
                   "memory per GPU by pipeline stage", "headroom", "step time", "pipeline bubble",
                   "MFU", "defaults"):
        assert needle in text


def test_the_table_marks_sequence_parallel_rows_beside_their_tp(capsys):
    """Searched on and off with TP, two rows otherwise alike differ in SP: the table says which."""
    assert main(["plan", "--gpus", "64", "--model", "llama2-13b", "--tp", "4", "--pp", "1",
                 "--recompute", "none", "--zero", "2", "--top", "40"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip()[:1].isdigit() and len(line.split()) > 12]
    tps = {tuple(r[3:5]) for r in rows}
    assert ("4", "+SP") in tps and any(r[3] == "4" and r[4] != "+SP" for r in rows)


def test_all_pinned_evaluates_exactly_that_layout(capsys):
    out = plan_json(capsys, "--gpus", "1024", "--params", "175e9", "--tp", "8", "--pp", "8",
                    "--dp", "16", "--micro-batch", "1", "--zero", "1", "--recompute", "selective")
    assert len(out["candidates"]) == 1
    c = out["candidates"][0]
    assert (c["dp"], c["pp"], c["tp"], c["micro_batch"], c["grad_accum"], c["zero_stage"],
            c["recompute"]) == (16, 8, 8, 1, 96, 1, "selective")


def test_pinned_layout_that_cannot_work_says_why():
    proc = run_cli("plan", "--gpus", "1024", "--params", "175e9", "--tp", "8", "--pp", "8", "--dp", "16",
                   "--micro-batch", "1", "--zero", "2", "--recompute", "none")
    assert proc.returncode == 1
    assert "ZeRO-2 with a pipeline" in proc.stdout
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("llmlaunch: error:")


def test_a_pin_a_rule_forbids_is_not_called_too_big():
    """A pinned ZeRO stage the engine does not run has no layout; it is not 'does not fit'."""
    proc = run_cli("plan", "--gpus", "8", "--model", "llama3-8b", "--engine", "fsdp", "--zero", "1")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("llmlaunch: error: 8.0B has no layout on 8 x a100-80gb with zero_stage=1: ")
    assert "engine fsdp runs ZeRO stages 0, 2, 3" in last and "does not fit" not in last


def test_no_fit_error_says_how_many_gpus_are_needed():
    proc = run_cli("plan", "--gpus", "8", "--params", "175e9", "--gpu", "a100-40gb")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "does not fit on 8 x a100-40gb under any layout; needs at least" in last
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, needle", [
    (["plan", "--gpus", "0"], "--gpus must be a positive integer"),
    (["plan", "--gpu", "tpu-v9"], "--gpu 'tpu-v9' is not in the catalog"),
    (["plan", "--model", "gpt5"], "--model 'gpt5' is not a preset"),
    (["plan", "--params", "-3"], "--params must be a positive number"),
    (["plan", "--layers", "4", "--hidden", "64"], "--layers, --hidden and --heads go together"),
    (["plan", "--hf-config", "/nonexistent/config.json"], "--hf-config"),
    (["plan", "--gpus", "12", "--gpus-per-node", "8"], "not a whole number of nodes"),
    (["cost", "--params", "7e9", "--tokens", "1e12", "--mfu", "2"], "--mfu must be in (0, 1]"),
    (["scale"], "give --compute"),
    (["plan", "--params", "1e3"], "the nearest shape has"),
    (["plan", "--global-batch", "0"], "--global-batch must be a positive integer"),
    (["plan", "--seq-len", "0"], "--seq-len must be a positive integer"),
    (["plan", "--tp", "3"], "--tp 3 does not divide --gpus 1024"),
    (["plan", "--dp", "16", "--pp", "8", "--tp", "4"], "dp*pp*tp = 16*8*4 = 512 != --gpus 1024"),
    (["train", "--config", "/nonexistent.yaml"], "cannot read run config"),
    (["train", "--config", "tiny-cpu", "--set", "layout.tp=3"], "tp=3 does not divide heads=4"),
    (["train", "--config", "tiny-cpu", "--set", "data.path=/nonexistent"], "data source '/nonexistent' does not exist"),
])
def test_bad_input_is_one_clear_line(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_horizon_adds_time_cost_and_energy(capsys):
    out = plan_json(capsys, "--gpus", "1024", "--params", "175e9", "--tokens", "300e9")
    horizon = out["horizon"]
    best = out["candidates"][0]
    assert horizon["wall_days"] == pytest.approx(300e9 / best["tokens_per_s"] / 86400)
    assert horizon["gpu_hours"] == pytest.approx(horizon["wall_days"] * 24 * 1024)
    assert horizon["cost_usd"] == pytest.approx(horizon["gpu_hours"] * 2.0)


def test_cost_json_matches_the_lecture(capsys):
    assert main(["cost", "--params", "175e9", "--tokens", "300e9", "--gpu", "a100-80gb", "--mfu", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"flops", "gpu_hours", "gpu_days", "wall_days", "cost_usd", "energy_mwh",
                        "params", "active_params", "flops_6nd", "flops_definition"}
    assert out["params"] == out["active_params"] == 175e9          # dense: every parameter active
    assert out["flops_6nd"] == pytest.approx(3.15e23)              # the lecture's 6 N D
    assert out["flops_6nd"] / 312e12 / 86400 == pytest.approx(11_500, rel=0.02)
    # priced on the model FLOPs of GPT-3's shape (attention over 2048 tokens: +2.5%), as plan's MFU
    assert out["flops_definition"] == "model"
    assert out["flops"] == pytest.approx(3.15e23 * 1.025, rel=0.005)
    assert out["gpu_days"] == pytest.approx(out["flops"] / 312e12 / 86400)


def test_scale_json(capsys):
    assert main(["scale", "--compute", "5.76e23", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"compute_flops", "params", "tokens", "tokens_per_param", "loss"}
    assert out["params"] == pytest.approx(70e9, rel=0.05)
    assert main(["scale", "--params", "70e9", "--tokens", "1.4e12", "--json"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["compute_flops"] == pytest.approx(6 * 70e9 * 1.4e12)
    assert main(["scale", "--compute", "1e24", "--inference-tokens", "1e14", "--json"]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["params"] < out["params"] and served["total_flops"] > served["compute_flops"]


def test_planner_never_imports_torch():
    code = ("import sys; from llmlaunch.cli import main; "
            "rc = main(['plan', '--gpus', '64', '--model', 'llama3-8b', '--json']); "
            "bad = [m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules]; "
            "print(bad, file=sys.stderr); sys.exit(rc or bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_hf_config_counts_exactly(tmp_path, capsys):
    from llmlaunch.topology.model_spec import ModelSpec
    from llmlaunch.topology.params import total_params

    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 1000,
           "max_position_embeddings": 256, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = plan_json(capsys, "--hf-config", str(tmp_path), "--gpus", "8", "--gpu", "a100-80gb")
    spec = ModelSpec(arch="llama", layers=2, hidden=64, heads=4, kv_heads=2, ffn_hidden=160, vocab=1000)
    assert out["model"]["params"] == total_params(spec)
    gpt2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 1000,
            "n_positions": 128}
    (tmp_path / "config.json").write_text(json.dumps(gpt2))
    out = plan_json(capsys, "--hf-config", str(tmp_path / "config.json"), "--gpus", "8")
    assert out["model"]["params"] == total_params(
        ModelSpec(arch="gpt2", layers=2, hidden=64, heads=4, vocab=1000, seq_len=128))


def test_emit_writes_the_three_files_and_refuses_to_overwrite(tmp_path, capsys):
    out_dir = tmp_path / "runs" / "gpt3 $(touch pwned); x"
    # pp 8 pinned: a pipeline job (unpinned, sequence parallelism makes pp 1 the fastest)
    args = ["plan", "--gpus", "1024", "--params", "175e9", "--pp", "8", "--emit", str(out_dir),
            "--job-name", "gpt3; rm -rf / #"]
    assert main(args) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["ds_config.json", "run.yaml", "train.sbatch"]
    ds = json.loads((out_dir / "ds_config.json").read_text())
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * \
        ds["gradient_accumulation_steps"] * 16
    script = (out_dir / "train.sbatch").read_text()
    assert "#SBATCH --nodes=128" in script and "#SBATCH --ntasks-per-node=8" in script
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --time=02:00:00" in script
    assert "#SBATCH --job-name=gpt3__rm_-rf____" in script  # sbatch parses these lines itself
    # the run directory is quoted for the shell: evaluating the assignment yields it verbatim
    line = next(x for x in script.splitlines() if x.startswith("RUN_DIR="))
    proc = subprocess.run(["bash", "-c", line + '; printf %s "$RUN_DIR"'], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.stdout == str(out_dir.resolve()) and not (tmp_path / "pwned").exists()
    assert subprocess.run(["bash", "-n", str(out_dir / "train.sbatch")]).returncode == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert not [p for p in tmp_path.glob("runs/.*")]  # no temporary directories left behind


def test_estimator_only_options_evaluate_but_do_not_emit(tmp_path, capsys):
    args = ["--gpus", "512", "--model", "megatron-1t", "--tp", "8", "--pp", "64", "--dp", "1",
            "--micro-batch", "1", "--zero", "0", "--recompute", "full", "--global-batch", "512",
            "--sequence-parallel", "--virtual-stages", "2"]
    out = plan_json(capsys, *args)
    cand = out["candidates"][0]
    assert cand["sequence_parallel"] is True and cand["virtual_stages"] == 2
    assert cand["bubble_fraction"] == pytest.approx(63 / (2 * 512 + 63))
    assert main(["plan", *args, "--emit", str(tmp_path / "x")]) == 2
    assert "estimates only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_emitted_run_yaml_loads_with_the_plan_layout(tmp_path, capsys):
    from llmlaunch.config import load_run_config

    assert main(["plan", "--gpus", "16", "--model", "llama2-7b", "--emit", str(tmp_path / "r")]) == 0
    config = load_run_config(tmp_path / "r" / "run.yaml")
    assert config.model.layers == 32 and config.model.arch == "llama"
    lay = config.layout
    assert lay.dp * lay.pp * lay.tp == 16


def test_plan_says_when_a_layout_is_host_bound(capsys):
    # GPT-3 125M at micro-batch 1 of 1024 tokens on H100s: dispatch (1299 ops x 6 us, plus
    # DeepSpeed's pipeline instructions) outlasts the GEMMs and memory-bound kernels
    args = ["--gpus", "8", "--gpu", "h100-80gb", "--model", "gpt3-125m", "--micro-batch", "1",
            "--recompute", "none", "--seq-len", "1024"]
    assert plan_json(capsys, *args)["candidates"][0]["host_bound"] is True
    assert main(["plan", *args]) == 0
    assert "host-bound: dispatching each micro-batch's ops (6 us each)" in capsys.readouterr().out
    assert plan_json(capsys, *args, "--op-overhead-us", "0")["candidates"][0]["host_bound"] is False


def test_plan_on_cpu_searches_fp32_zero_0_and_1(capsys):
    out = plan_json(capsys, "--gpus", "4", "--gpus-per-node", "4", "--gpu", "cpu", "--model",
                    "gpt3-125m")
    assert out["candidates"] and {c["zero_stage"] for c in out["candidates"] if c["pp"] > 1} <= {0, 1}
    # ZeRO-2/3 only on the plain engine (pp = 1); no offload without a host link figure
    assert {c["offload"] for c in out["candidates"]} == {"none"}


@pytest.mark.parametrize("command", ["train", "validate"])
def test_a_deepspeed_config_it_would_refuse_fails_before_any_rank_starts(command, tmp_path, capsys):
    code = main([command, "--config", "tiny-cpu", "--run-dir", str(tmp_path / "run"),
                 "--set", "train.precision=bf16", "--set", "layout.zero_stage=0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "use layout.zero_stage=1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "logs").exists()


def test_plan_json_names_offload_for_candidates_and_rejected_layouts(capsys):
    # Llama 2 70B on 8 x 80 GB fits only with ZeRO-3 and offload; the pipeline layouts it rejects
    # hold everything on the GPU
    assert main(["plan", "--gpus", "8", "--model", "llama2-70b", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["candidates"] and all(c["offload"] != "none" and c["pp"] == 1
                                     for c in out["candidates"])
    assert out["rejected"] and all("offload" in r for r in out["rejected"])
    assert any(r["pp"] > 1 and r["offload"] == "none" for r in out["rejected"])
