"""`plan` of Mixtral-8x7B (the preset: Jiang et al. 2024's shape) with expert parallelism, as a user
types it: the expert groups and the all-to-all time in the report, ep in the JSON, --ep errors as
one line, --emit refused (tests/torch/test_hf_counts.py does the same from a config.json)."""
import json
import re

import pytest

from llmlaunch.cli import main

MIXTRAL = ["plan", "--model", "mixtral-8x7b", "--gpus", "64"]


def test_mixtral_plan_with_ep_prints_expert_groups_and_the_alltoall(capsys):
    assert main([*MIXTRAL, "--ep", "4", "--pp", "4", "--tp", "2", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "12.88B of 46.70B parameters active per token" in text
    # the model line names where the count came from (a resume source once shadowed it: "(None)")
    assert "mixtral-8x7b: 46.70B parameters (formula: topology/params.py)" in text
    assert "experts split ep=4 (2 of 8 per GPU)" in text
    # 64 GPUs as dp 8 x pp 4 x tp 2: 16 expert groups of 4 consecutive data-parallel ranks (stride tp)
    assert "expert   groups: 16 of 4 ranks" in text
    assert "expert-data groups: 32 of 2 ranks" in text
    row = next(line for line in text.splitlines() if line.startswith("EP all-to-all (ep=4"))
    time, unit = re.search(r"capacity factor 1\)\s+([\d.]+) (ms|s)\s", row).groups()
    assert float(time) > 0


def test_mixtral_json_carries_ep_and_the_alltoall_time(capsys):
    assert main([*MIXTRAL, "--json", "--ep", "2", "--capacity-factor", "1.25"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["capacity_factor"] == 1.25 and out["candidates"]
    for cand in out["candidates"]:
        assert cand["ep"] == 2 and cand["dp"] % 2 == 0
        assert cand["step_time_breakdown_s"]["ep_comm_s"] > 0
    # unpinned, the search tries every ep dividing dp and 8 and ranks them
    assert main([*MIXTRAL, "--json", "--top", "1000"]) == 0
    searched = json.loads(capsys.readouterr().out)["candidates"]
    assert {c["ep"] for c in searched} == {1, 2, 4, 8}
    assert all(c["step_time_breakdown_s"]["ep_comm_s"] == 0 for c in searched if c["ep"] == 1)


def test_expert_pins_that_cannot_work_say_why(capsys):
    assert main([*MIXTRAL, "--ep", "3"]) == 2
    assert "--ep 3 does not divide the model's 8 experts; --ep can be 1, 2, 4, 8" in capsys.readouterr().err
    assert main(["plan", "--model", "llama2-7b", "--gpus", "8", "--ep", "2"]) == 2
    assert "needs a Mixture-of-Experts model; llama2-7b is dense" in capsys.readouterr().err
    assert main([*MIXTRAL, "--dp", "4", "--ep", "8"]) == 2
    assert "--ep 8 does not divide --dp 4" in capsys.readouterr().err
    # searched dp: every dp the pin does not divide is ruled out with that reason
    assert main(["plan", "--model", "mixtral-8x7b", "--gpus", "4", "--ep", "8"]) == 1
    assert "ep=8 does not divide dp=4" in capsys.readouterr().err
    assert main([*MIXTRAL, "--capacity-factor", "0.5"]) == 2
    assert "--capacity-factor must be at least 1.0" in capsys.readouterr().err


def test_emit_of_an_expert_parallel_layout_writes_ep_and_the_moe_keys(tmp_path, capsys):
    import yaml

    assert main([*MIXTRAL, "--ep", "4", "--emit", str(tmp_path / "out")]) == 0
    run = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert run["layout"]["ep"] == 4 and run["layout"]["dp"] % 4 == 0
    assert (run["model"]["arch"], run["model"]["experts"], run["model"]["experts_per_token"],
            run["model"]["expert_ffn_hidden"]) == ("mixtral", 8, 2, 14336)
    assert run["model"]["capacity_factor"] == 0.0          # the run routes dropless
    assert "ep=4" in (tmp_path / "out" / "run.yaml").read_text().splitlines()[0]


def test_the_drawn_schedule_and_breakdown_carry_the_alltoall():
    """The plan page's 1F1B schedule is made of the same per-stage times as the step (all-to-all
    included), and its breakdown bar lists the all-to-all only where there is one."""
    from llmlaunch.cli.plan import plan_from_argv
    from llmlaunch.report.figures import breakdown_figure
    from llmlaunch.topology.schedule import candidate_schedule

    _, _, chosen = plan_from_argv(["--model", "mixtral-8x7b", "--gpus", "64", "--ep", "4",
                                   "--pp", "4"])
    sch = candidate_schedule(chosen)
    for f, b, t in zip(sch.fwd, sch.bwd, chosen.stage_times):
        assert t.ep_comm_s > 0 and f + b == pytest.approx(t.total_s)
    step = chosen.step
    assert step.ep_comm_s == pytest.approx(chosen.layout.grad_accum * max(
        chosen.stage_times, key=lambda t: t.total_s).ep_comm_s)
    assert "EP all-to-all" in breakdown_figure(step)["data"][0]["y"]
    _, _, dense = plan_from_argv(["--model", "llama2-7b", "--gpus", "8"])
    assert "EP all-to-all" not in breakdown_figure(dense.step)["data"][0]["y"]


def test_rank_map_and_rejected_layouts_name_the_expert_degree(capsys):
    from llmlaunch.report.rank_map import rank_map
    from llmlaunch.topology.layout import Layout

    rm = rank_map(Layout(dp=8, pp=1, tp=2, ep=4), 8)        # ep groups of 4 ranks, stride 2
    assert (rm["ep"], rm["ep_stride"], rm["ep_crosses_nodes"]) == (4, 2, False)
    assert rank_map(Layout(dp=8, pp=1, tp=2, ep=8), 8)["ep_crosses_nodes"] is True
    # a pinned layout that does not fit is listed with its ep
    assert main([*MIXTRAL, "--dp", "64", "--pp", "1", "--tp", "1", "--ep", "8", "--micro-batch",
                 "4", "--zero", "1", "--recompute", "none"]) == 1
    assert "dp=64 pp=1 tp=1 ep=8 mb=4" in capsys.readouterr().out
