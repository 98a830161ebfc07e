"""The simulated pipeline schedule (topology/schedule.py): 1F1B and interleaved 1F1B against the
closed forms of step_time.py, the schedule's dependencies, and the schedule the plan page draws
against the step time the plan prints."""
import pytest

from llmlaunch.cli.plan import plan_from_argv
from llmlaunch.report import plan_page
from llmlaunch.topology import schedule
from llmlaunch.topology.step_time import pipeline_time_s


def check_dependencies(ops, p, v=1):
    """A stage runs one op at a time; forwards follow the previous stage (chunk), backwards the
    next one."""
    by_stage = {}
    for op in ops:
        by_stage.setdefault(op.stage, []).append((op.start_s, op.duration_s))
    for spans in by_stage.values():
        spans.sort()
        assert all(a[0] + a[1] <= b[0] + 1e-12 for a, b in zip(spans, spans[1:]))
    done = {(op.stage, op.kind, op.micro_batch, op.chunk): op.start_s + op.duration_s for op in ops}
    for op in ops:
        s, j, c = op.stage, op.micro_batch, op.chunk
        if op.kind == "F":
            before = (s - 1, "F", j, c) if s > 0 else (p - 1, "F", j, c - 1) if c > 0 else None
        else:
            before = ((s + 1, "B", j, c) if s < p - 1 else (0, "B", j, c + 1) if c < v - 1
                      else (s, "F", j, c))
        if before is not None:
            assert op.start_s >= done[before] - 1e-12, (op, before)


@pytest.mark.parametrize("p, m", [(1, 1), (1, 8), (4, 4), (4, 16), (8, 3), (16, 16)])
def test_one_f_one_b_equal_stages_end_at_the_closed_form(p, m):
    ops = schedule.simulate([1.0] * p, [2.0] * p, m)
    assert len(ops) == 2 * p * m
    end = max(op.start_s + op.duration_s for op in ops)
    assert end == pytest.approx(pipeline_time_s([3.0] * p, m))  # (m + p - 1)(f + b)
    check_dependencies(ops, p)


@pytest.mark.parametrize("p, m, v", [(2, 4, 2), (4, 8, 2), (4, 4, 3), (8, 16, 4)])
def test_interleaved_equal_stages_end_at_the_closed_form(p, m, v):
    ops = schedule.simulate([1.0] * p, [2.0] * p, m, virtual_stages=v)
    assert len(ops) == 2 * p * m * v
    end = max(op.start_s + op.duration_s for op in ops)
    # Narayanan et al. 2021 Section 2.2.2: (m + (p - 1)/v) T, T = f + b of a whole stage
    assert end == pytest.approx(3.0 * (m + (p - 1) / v))
    assert end == pytest.approx(pipeline_time_s([3.0] * p, m, v))
    check_dependencies(ops, p, v)


def test_interleaving_needs_micro_batches_in_groups_of_pp():
    with pytest.raises(ValueError, match="divisible by pp=4"):
        schedule.simulate([1.0] * 4, [2.0] * 4, 6, virtual_stages=2)
    inputs, result, chosen = plan_from_argv(["--gpus", "64", "--params", "175e9", "--tp", "8",
                                             "--pp", "8", "--dp", "1", "--micro-batch", "1",
                                             "--zero", "1", "--recompute", "full",
                                             "--virtual-stages", "2", "--global-batch", "12"])
    assert not chosen.fits and any("divisible by pp=8" in r for r in chosen.reasons)


def test_unequal_stages_the_closed_form_is_an_upper_bound():
    f, b = [1.0, 1.2, 0.8, 1.1], [2.0, 2.4, 1.6, 2.2]
    ops = schedule.simulate(f, b, 12)
    end = max(op.start_s + op.duration_s for op in ops)
    closed = pipeline_time_s([x + y for x, y in zip(f, b)], 12)
    assert end <= closed + 1e-9
    assert end >= 12 * max(x + y for x, y in zip(f, b))   # the slowest stage never waits less
    check_dependencies(ops, 4)


def test_candidate_schedule_uses_the_planners_stage_times():
    inputs, _, chosen = plan_from_argv(["--gpus", "1024", "--params", "175e9", "--pp", "8"])
    lay = chosen.layout
    sch = schedule.candidate_schedule(chosen)
    assert len(chosen.stage_times) == lay.pp
    for f, b, t in zip(sch.fwd, sch.bwd, chosen.stage_times):
        assert f + b == pytest.approx(t.total_s)
        assert f / (f + b) == pytest.approx(1 / 3, abs=0.05)
    slowest = max(t.total_s for t in chosen.stage_times)  # compute + TP + PP for m micro-batches
    assert slowest * lay.grad_accum == pytest.approx(
        chosen.step.compute_s + chosen.step.tp_comm_s + chosen.step.pp_comm_s)
    assert sch.drawn == min(lay.grad_accum, schedule.MAX_DRAWN_MICRO_BATCHES) == 32
    assert len(sch.ops) == 2 * lay.pp * sch.drawn
    assert sch.idle, "a pipeline has a bubble"
    assert schedule.drawn_micro_batches(96, 1000) * 2 * 96 <= schedule.MAX_SCHEDULE_OPS
    assert schedule.drawn_micro_batches(1, 3) == 3
    assert schedule.drawn_micro_batches(8, 30, virtual_stages=2) == 24   # a multiple of pp


@pytest.mark.parametrize("virtual", ["1", "2"])
def test_plan_page_draws_the_step_time_the_plan_prints(virtual, tmp_path, capsys):
    """`plan --virtual-stages 2 --report r.html`: the schedule drawn is the plan's (its per-stage
    times carry sequence parallelism and interleaving; the drawn step ends where the printed one
    does, within the closed form's allowance for unequal first and last stages)."""
    from llmlaunch.cli import main

    argv = ["plan", "--gpus", "64", "--params", "175e9", "--tp", "8", "--pp", "8", "--dp", "1",
            "--micro-batch", "1", "--zero", "1", "--recompute", "full", "--global-batch", "16",
            "--sequence-parallel", "--virtual-stages", virtual, "--gpu-memory-gib", "400",
            "--report", str(tmp_path / "r.html")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    step_line = next(line for line in printed.splitlines() if line.startswith("step time "))
    printed_s = float(step_line.split()[2])        # "step time 5.43 s (bubble ..."
    page = (tmp_path / "r.html").read_text()
    import re
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"',
                            re.search(r'<section id="schedule"([^>]*)>', page).group(1)))
    assert attrs["virtual-stages"] == virtual
    assert float(attrs["step-s"]) == pytest.approx(printed_s, rel=5e-3)
    assert float(attrs["drawn-end-s"]) == pytest.approx(printed_s, rel=0.01)
    assert int(attrs["ops"]) == 2 * 8 * 16 * int(virtual)

    _, _, chosen = plan_from_argv(argv[1:-2])
    assert chosen.layout.virtual_stages == int(virtual) and chosen.layout.sequence_parallel
    drawn = schedule.candidate_schedule(chosen)
    # the closed form bounds it; interleaved, with the sends of the first and last stages
    # attributed to one direction (forward_backward_times), it can be passed by a hair
    assert drawn.end_s <= chosen.step.total_s * (1 + 1e-3)
    plan_page.write_plan_report(tmp_path / "again.html", *plan_from_argv(argv[1:-2]))
