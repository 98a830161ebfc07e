"""The supervisor's stop / requeue / lost-peer protocol as pure decisions over recorded outcomes
(launcher/outcome.py, launcher/slurm.py, launcher/start_log.py): no Slurm, no ranks."""
import pytest

from llmlaunch.launcher import start_log
from llmlaunch.launcher.outcome import (BATCH_SIGNAL, CANCELLED, REQUEUED_BY_SLURM, TIME_LIMIT,
                                        UNKNOWN, StartFacts, decide)
from llmlaunch.launcher.slurm import classify_stop, parse_job_record, tasks_per_node

SAVED = {"step": 7, "signal": "SIGUSR1", "checkpoint": "step00000007"}
BEFORE_FIRST = {"step": 0, "signal": "SIGUSR1", "checkpoint": None}

# `scontrol show job -o` lines as the batch step read them when its signal came (local cluster,
# Slurm 22.05.8; docs/launch.md "Signals"), trimmed to what classify_stop reads and what surrounds it
RECORDS = {
    "scancel": "JobId=1 JobName=llmlaunch JobState=COMPLETING Reason=None Dependency=(null) "
               "Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 RunTime=00:00:02",
    "scontrol requeue": "JobId=2 JobState=COMPLETING Reason=None Requeue=1 Restarts=1 "
                        "TimeLimit=UNLIMITED EndTime=Unknown",
    "preemption": "JobId=4 JobState=COMPLETING Reason=None Requeue=1 Restarts=1 EndTime=Unknown",
    "time limit": "JobId=6 JobState=COMPLETING Reason=TimeLimit Requeue=1 Restarts=0",
    "--signal=B:USR1@45": "JobId=6 JobState=RUNNING Reason=None Requeue=1 Restarts=0",
}


@pytest.mark.parametrize("cause, restart, expected", [
    ("scancel", 0, CANCELLED),
    ("scontrol requeue", 0, REQUEUED_BY_SLURM),
    ("preemption", 0, REQUEUED_BY_SLURM),
    ("time limit", 0, TIME_LIMIT),
    ("--signal=B:USR1@45", 0, BATCH_SIGNAL),
    ("scontrol requeue", 1, CANCELLED),   # seen from the start that has Restarts=1 already
])
def test_slurms_record_tells_the_causes_of_a_stop_apart(cause, restart, expected):
    assert classify_stop(parse_job_record(RECORDS[cause]), restart) == expected


def test_an_unreadable_record_is_unknown_and_a_strange_state_too():
    assert classify_stop(None, 0) == UNKNOWN
    assert classify_stop(parse_job_record("JobId=3 JobState=NODE_FAIL Reason=NodeDown"), 0) == UNKNOWN
    assert parse_job_record("JobId=3 Command=/a b/c.sh JobState=RUNNING")["JobState"] == "RUNNING"


def test_tasks_per_node_from_slurms_variable():
    assert tasks_per_node("4(x2)", 8, 2) == 4
    assert tasks_per_node("", 12, 3) == 4 and tasks_per_node("8", 8, 1) == 8


def slurm(**kw) -> StartFacts:
    return StartFacts(**{"slurm": True, "launched": True, "job": "12", "logs": "/r/logs", **kw})


def test_finished():
    d = decide(slurm(rc=0))
    assert (d.code, d.requeue, d.lines) == (0, False, ["llmlaunch: training finished"])


def test_time_limit_warning_checkpoints_and_requeues():
    d = decide(slurm(rc=0, stopped=SAVED, stop_signal="SIGUSR1", slurm_stop=BATCH_SIGNAL))
    assert d.requeue and d.code == 0
    assert d.lines == ["llmlaunch: stopped (SIGUSR1) after step 7, checkpoint step00000007; "
                       "requeueing job 12"]


def test_scancel_checkpoints_and_ends_without_requeue():
    d = decide(slurm(rc=0, stopped={**SAVED, "signal": "SIGTERM"}, stop_signal="SIGTERM",
                     slurm_stop=CANCELLED))
    assert not d.requeue and d.code == 0
    assert d.lines == ["llmlaunch: job 12 cancelled (scancel): stopped after step 7, checkpoint "
                       "step00000007; not requeued"]


def test_requeue_or_preemption_leaves_the_requeue_to_slurm():
    d = decide(slurm(rc=0, stopped=SAVED, stop_signal="SIGTERM", slurm_stop=REQUEUED_BY_SLURM))
    assert not d.requeue and d.code == 0
    assert "Slurm requeued job 12 itself (scontrol requeue, preemption or a failed node)" in d.lines[0]


def test_the_time_limit_itself_requeues():
    d = decide(slurm(rc=0, stopped=SAVED, stop_signal="SIGTERM", slurm_stop=TIME_LIMIT))
    assert d.requeue and d.lines[0].startswith("llmlaunch: job 12 reached its time limit (SIGTERM)")


def test_a_stop_before_the_ranks_started_requeues_without_a_checkpoint():
    d = decide(slurm(launched=False, stop_signal="SIGUSR1", slurm_stop=BATCH_SIGNAL))
    assert d.requeue and d.lines == ["llmlaunch: stopped (SIGUSR1) before training started: no "
                                     "new checkpoint; requeueing job 12"]
    d = decide(slurm(launched=False, stop_signal="SIGTERM", slurm_stop=CANCELLED))
    assert not d.requeue and "cancelled (scancel): stopped before training started" in d.lines[0]


def test_ranks_killed_after_the_stop_signal_are_a_stop_not_a_failure():
    d = decide(slurm(rc=137, stop_signal="SIGTERM", slurm_stop=BATCH_SIGNAL))
    assert d.requeue and d.code == 0
    assert "before the ranks could checkpoint (they ended with exit 137)" in d.lines[0]


def test_ranks_still_starting_when_slurm_ends_the_job_are_ended_with_nothing_to_save():
    d = decide(slurm(rc=-9, trained=False, stop_signal="SIGTERM", slurm_stop=REQUEUED_BY_SLURM))
    assert d.lines == ["llmlaunch: stopped (SIGTERM) before training started: no new checkpoint; "
                       "Slurm requeued job 12 itself (scontrol requeue, preemption or a failed node)"]


def test_a_finished_run_stays_finished_when_the_stop_comes_after_the_last_step():
    assert decide(slurm(rc=0, stop_signal="SIGTERM", slurm_stop=CANCELLED)).lines == [
        "llmlaunch: training finished"]


def test_a_lost_peer_requeues_up_to_the_bound_then_fails_named():
    lost = "rank 1: ranks 4, 5, 6, 7 on node2 stopped answering"
    d = decide(slurm(rc=1, lost=lost, restart=0, max_restarts=2))
    assert d.requeue and d.shrink and d.code == 0
    assert d.lines == [f"llmlaunch: error: lost a peer: {lost}",
                       "llmlaunch: requeueing job 12 after a lost peer (start 2 of at most 3); it "
                       "resumes from the last complete checkpoint"]
    d = decide(slurm(rc=1, lost=lost, restart=2, max_restarts=2, failure="x"))
    assert not d.requeue and d.code == 1
    assert d.lines[1:] == ["llmlaunch: error: not requeued: job 12 has started 3 times "
                           "(LLMLAUNCH_MAX_RESTARTS=2)",
                           "llmlaunch: error: training failed (exit 1): x; logs in /r/logs"]


def test_a_lost_host_that_slurm_requeued_first_is_named_and_an_elastic_job_shrinks():
    """A host killed: the ranks name it, then Slurm finds the node down, requeues the job itself and
    ends the start (SIGTERM, Restarts + 1): named, not requeued twice, shrunk when elastic."""
    lost = "rank 1: ranks 8, 9, 10, 11 on node3 stopped answering"
    d = decide(slurm(rc=1, lost=lost, stop_signal="SIGTERM", slurm_stop=REQUEUED_BY_SLURM))
    assert not d.requeue and d.shrink and d.code == 0
    assert d.lines == [f"llmlaunch: error: lost a peer: {lost}",
                       "llmlaunch: requeueing job 12 after a lost peer: Slurm requeued it already (it "
                       "found the host down); it resumes from the last complete checkpoint"]


def test_a_failure_is_named_in_the_job_log():
    d = decide(slurm(rc=1, failure="error on rank 3: CUDA out of memory"))
    assert d.lines == ["llmlaunch: error: training failed (exit 1): error on rank 3: CUDA out of "
                       "memory; logs in /r/logs"]


def test_requeues_without_progress_stop_at_the_bound_with_the_reason():
    earlier = [{"outcome": "stopped (SIGUSR1) before training started"}] * 2
    facts = dict(launched=False, stop_signal="SIGUSR1", slurm_stop=BATCH_SIGNAL, progressed=False)
    d = decide(slurm(**facts, fruitless_before=earlier[:1], max_fruitless=3))
    assert d.requeue                                          # the second fruitless start
    d = decide(slurm(**facts, fruitless_before=earlier, max_fruitless=3))
    assert not d.requeue and d.code == 1
    assert d.lines == ["llmlaunch: error: not requeued: 3 starts of job 12 in a row trained no step "
                       "(LLMLAUNCH_MAX_STARTS_WITHOUT_PROGRESS=3); the last: stopped (SIGUSR1) "
                       "before training started: no new checkpoint. Find why a start cannot reach "
                       "its first step (the time limit against the start-up, a failing host) and "
                       "resubmit"]
    d = decide(slurm(**{**facts, "progressed": True}, fruitless_before=earlier, max_fruitless=3))
    assert d.requeue


def local(**kw) -> StartFacts:
    return StartFacts(**{"slurm": False, "launched": True, "logs": "/r/logs", **kw})


def test_local_outcomes_and_exit_codes():
    assert decide(local(rc=0)).code == 0 and decide(local(rc=0)).lines == []
    d = decide(local(rc=0, stopped=SAVED, stop_signal="SIGUSR1"))
    assert (d.code, d.lines) == (75, ["llmlaunch: stopped (SIGUSR1) after step 7, checkpoint "
                                      "step00000007; run the same command again to resume"])
    d = decide(local(rc=0, stopped=BEFORE_FIRST, stop_signal="SIGUSR1"))
    assert d.lines == ["llmlaunch: stopped (SIGUSR1) before the first step, nothing to checkpoint; "
                       "run the same command again"]
    d = decide(local(launched=False, stop_signal="SIGTERM"))
    assert (d.code, d.lines) == (75, ["llmlaunch: stopped (SIGTERM) before any rank started; run "
                                      "the same command again"])
    d = decide(local(rc=0, stopped={**SAVED, "signal": "SIGINT"}, stop_signal="SIGINT",
                     interrupts=1))
    assert d.code == 130 and d.lines[0].startswith("llmlaunch: interrupted: stopped (SIGINT) after")
    d = decide(local(rc=-9, stop_signal="SIGINT", interrupts=2, killed=True))
    assert d.code == 130 and "did not stop within 30 s and were killed" in d.lines[0]
    d = decide(local(rc=1, failure="rank 3 failed first, killed by SIGKILL"))
    assert (d.code, d.lines) == (1, ["llmlaunch: error: the job failed (exit 1): rank 3 failed "
                                     "first, killed by SIGKILL; each rank's log is in /r/logs"])


def test_a_start_whose_run_directory_was_taken_over_ends_for_good():
    d = decide(slurm(rc=0, stopped=SAVED, lock_lost="the Slurm job (pid 9 on node2, ...)"))
    assert (d.code, d.requeue) == (1, False)
    assert d.lines == ["llmlaunch: error: this start stopped after step 7, checkpoint step00000007: "
                       "the run directory was taken over by the Slurm job (pid 9 on node2, ...); "
                       "not requeued"]


def test_the_start_log_counts_starts_without_progress_per_job(tmp_path):
    for event in [{"event": "begin", "job": "7", "start": 0, "step": 0},
                  {"event": "end", "job": "7", "start": 0, "step": 12, "outcome": "stopped a"},
                  {"event": "begin", "job": "7", "start": 1, "step": 12},
                  {"event": "end", "job": "7", "start": 1, "step": 12, "outcome": "stopped b"},
                  {"event": "begin", "job": "7", "start": 2, "step": 12},   # killed: no end line
                  {"event": "begin", "job": "7", "start": 3, "step": 12}]:
        start_log.append_event(tmp_path, event)
    with (tmp_path / "starts.jsonl").open("a") as log:
        log.write('{"event": "end", "jo')   # torn by a crash
    starts = start_log.starts_of(start_log.read_events(tmp_path))
    assert [(s["start"], s["from_step"], s["to_step"]) for s in starts] == [
        (0, 0, 12), (1, 12, 12), (2, 12, 12), (3, 12, None)]
    assert "supervisor was killed" in starts[2]["outcome"]
    assert [s["start"] for s in start_log.fruitless_in_a_row(starts, "7")] == [1, 2]
    assert start_log.fruitless_in_a_row(starts, "8") == []     # another job: its own count


def test_the_job_log_gets_the_first_failing_ranks_own_line(tmp_path):
    from llmlaunch.launcher.liveness import read_lost
    from llmlaunch.launcher.slurm import first_failure

    (tmp_path / "train-12.0-0.out").write_text(
        "step 3\nllmlaunch: error on rank 0: rank 2 on node1 stopped answering (Connection reset)\n")
    (tmp_path / "train-12.0-2.out").write_text(
        "llmlaunch: error on rank 2: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    (tmp_path / "train-11.0-0.out").write_text("llmlaunch: error on rank 0: an older job's\n")
    assert first_failure(tmp_path / "train-12.0-%t.out") == (
        "error on rank 2: CUDA out of memory. Tried to allocate 2.00 GiB")
    (tmp_path / "train-12.0-2.out").unlink()
    assert first_failure(tmp_path / "train-12.0-%t.out").endswith("stopped answering (Connection reset)")
    assert first_failure(tmp_path / "nothing-%t.out") == ""
    lost = tmp_path / "lost-12.0.txt"
    lost.write_text("rank 0: the job's rendezvous store at 10.0.0.1:1 stopped answering too\n"
                    "rank 1: ranks 4, 5 on node2 stopped answering\n")
    assert read_lost(lost, 0) == "rank 1: ranks 4, 5 on node2 stopped answering"
    assert read_lost(tmp_path / "absent.txt", 0.2) == ""
