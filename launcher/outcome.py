"""What a start came to and what the supervisor does next: pure decisions over the facts it recorded
(`StartFacts`), tested without Slurm or ranks (tests/unit/test_outcome.py). launcher/job.py gathers
the facts and carries out the `Decision`.

The outcomes: finished; stopped for a signal (with a checkpoint, or before the first step); a peer
lost (a rank or host stopped answering); failed. What follows them:

| outcome | `llmlaunch train` (local) | Slurm job |
| --- | --- | --- |
| finished | exit 0 | exit 0, "training finished" |
| stopped, Ctrl-C | exit 130, one line | - |
| stopped, other signal | exit 75: run again to resume | by Slurm's account of the stop (`slurm.classify_stop`): scancel: end, not requeued; `scontrol requeue` or preemption: Slurm requeues the job itself; time limit, or a signal to the batch step alone (`--signal=B:USR1@S`, `scancel --signal=USR1 --batch`): `scontrol requeue` |
| lost a peer | exit with the ranks' code, the lost ranks named | named; requeued while the job has started fewer than LLMLAUNCH_MAX_RESTARTS + 1 times |
| failed | exit with the ranks' code, the first failure named | the same, in the job log |

A requeue that would follow a start that trained no step is refused once
LLMLAUNCH_MAX_STARTS_WITHOUT_PROGRESS (default 3) starts of the job in a row trained none
(launcher/start_log.py), with the reason: a time limit shorter than the start-up or a fault that
recurs at every start would otherwise requeue the job forever.
"""
from __future__ import annotations

from dataclasses import dataclass, field

REQUEUE_EXIT_CODE = 75        # EX_TEMPFAIL: stopped, run again to resume
INTERRUPTED_EXIT_CODE = 130   # Ctrl-C
DEFAULT_MAX_RESTARTS = 2
DEFAULT_MAX_STARTS_WITHOUT_PROGRESS = 3

# How Slurm ended a start (slurm.classify_stop), as the supervisor read it when the signal came
CANCELLED, REQUEUED_BY_SLURM, TIME_LIMIT, BATCH_SIGNAL, UNKNOWN = (
    "cancelled", "requeued by Slurm", "time limit", "batch signal", "unknown")


@dataclass
class StartFacts:
    """What the supervisor saw of one start."""

    slurm: bool
    launched: bool                      # the ranks were started
    trained: bool = True                # they reached their training loop (metrics.jsonl written)
    rc: int | None = None               # srun's or the elastic launcher's exit code
    stopped: dict | None = None         # RUN_DIR/stopped.json: {step, signal, checkpoint}
    stop_signal: str = ""               # the first stop signal the supervisor received
    slurm_stop: str = ""                # CANCELLED, REQUEUED_BY_SLURM, ... ("" : no signal)
    interrupts: int = 0                 # Ctrl-C received
    killed: bool = False                # the supervisor killed the ranks (Ctrl-C grace over)
    lost: str = ""                      # who stopped answering (liveness.py's line)
    failure: str = ""                   # the first failing rank's one line
    job: str = ""                       # Slurm job id
    restart: int = 0                    # SLURM_RESTART_COUNT of this start
    max_restarts: int = DEFAULT_MAX_RESTARTS
    progressed: bool = True             # this start trained at least one step
    fruitless_before: list = field(default_factory=list)   # earlier starts in a row without one
    max_fruitless: int = DEFAULT_MAX_STARTS_WITHOUT_PROGRESS
    lock_lost: str = ""                 # another start took the run directory (who)
    logs: str = "RUN_DIR/logs"
    grace_s: float = 30.0


@dataclass
class Decision:
    code: int                           # the supervisor's exit code
    lines: list[str]                    # what it prints ("llmlaunch: error: ..." lines to stderr)
    requeue: bool = False               # run `scontrol requeue` before exiting
    shrink: bool = False                # after a lost peer: ask an elastic job for its minimum


def where_stopped(stopped: dict | None) -> str:
    """'after step 7, checkpoint step00000007' or 'before the first step, nothing to checkpoint'."""
    if stopped and stopped.get("checkpoint"):
        return f"after step {stopped['step']}, checkpoint {stopped['checkpoint']}"
    return "before the first step, nothing to checkpoint"


def decide(f: StartFacts) -> Decision:
    if f.lock_lost:   # two runs on one directory: neither may go on as if it owned it
        where = (f"stopped {where_stopped(f.stopped)}" if f.launched and f.rc == 0 and f.stopped
                 else f"ended (exit {f.rc})" if f.launched else "ended before training started")
        return Decision(1, [f"llmlaunch: error: this start {where}: the run directory was taken "
                            f"over by {f.lock_lost}; not requeued"])
    return _decide_slurm(f) if f.slurm else _decide_local(f)


def _decide_local(f: StartFacts) -> Decision:
    name = f.stop_signal or (f.stopped or {}).get("signal") or "a signal"
    again = "run the same command again"
    if not f.launched:
        code = INTERRUPTED_EXIT_CODE if f.interrupts else REQUEUE_EXIT_CODE
        return Decision(code, [f"llmlaunch: stopped ({name}) before any rank started; {again}"])
    if f.killed and not f.interrupts:   # preflight and validate ranks: nothing to save
        return Decision(REQUEUE_EXIT_CODE, [f"llmlaunch: stopped ({name}): the ranks were ended; "
                                            f"{again}"])
    if f.interrupts:
        if f.killed:
            line = (f"llmlaunch: interrupted: the ranks did not stop within {f.grace_s:g} s and "
                    "were killed; the newest complete checkpoint is the one to resume from")
        elif f.rc == 0 and f.stopped is not None:
            line = f"llmlaunch: interrupted: {_stopped_local(name, f.stopped)}"
        else:
            line = f"llmlaunch: interrupted (exit {f.rc}); logs in {f.logs}"
        return Decision(INTERRUPTED_EXIT_CODE, [line])
    if f.rc != 0:
        why = f": {f.failure}" if f.failure else ""
        return Decision(f.rc or 1, [f"llmlaunch: error: the job failed (exit {f.rc}){why}; each "
                                    f"rank's log is in {f.logs}"])
    if f.stopped is not None:
        return Decision(REQUEUE_EXIT_CODE, [f"llmlaunch: {_stopped_local(name, f.stopped)}"])
    return Decision(0, [])


def _stopped_local(name: str, stopped: dict) -> str:
    if stopped.get("checkpoint"):
        return (f"stopped ({name}) {where_stopped(stopped)}; run the same command again to "
                "resume")
    return f"stopped ({name}) before the first step, nothing to checkpoint; run the same command again"


def _decide_slurm(f: StartFacts) -> Decision:
    job, name = f.job, f.stop_signal or "a signal"
    if f.launched and f.rc and f.lost:    # a rank or host stopped answering (Slurm may end the
        return _lost_peer(f)              # job for the same cause: a node it found down)
    if f.slurm_stop:                      # a stop signal came: this start is over either way
        if f.launched and f.rc == 0 and f.stopped is None:
            return Decision(0, ["llmlaunch: training finished"])   # the last step came first
        if not f.launched or (f.rc != 0 and not f.trained):
            where = "before training started: no new checkpoint"
        elif f.rc == 0:
            where = where_stopped(f.stopped) if f.stopped is not None else "after the last step"
        else:
            where = (f"before the ranks could checkpoint (they ended with exit {f.rc}): the next "
                     "start resumes from the newest complete checkpoint")
        if f.slurm_stop == CANCELLED:
            return Decision(0, [f"llmlaunch: job {job} cancelled (scancel): stopped {where}; not "
                                "requeued"])
        if f.slurm_stop == REQUEUED_BY_SLURM:
            return Decision(0, [f"llmlaunch: stopped ({name}) {where}; Slurm requeued job {job} "
                                "itself (scontrol requeue, preemption or a failed node)"])
        if f.slurm_stop == TIME_LIMIT:
            why = f"job {job} reached its time limit ({name}): stopped {where}"
        else:
            why = f"stopped ({name}) {where}"
        return _requeue(f, [f"llmlaunch: {why}; requeueing job {job}"], why)
    if f.rc == 0:
        if f.stopped is not None:   # a rank got a signal the supervisor did not (sent to it alone)
            why = f"stopped ({f.stopped.get('signal') or 'a signal'}) {where_stopped(f.stopped)}"
            return _requeue(f, [f"llmlaunch: {why}; requeueing job {job}"], why)
        return Decision(0, ["llmlaunch: training finished"])
    return Decision(f.rc or 1, [_failed(f)])


def _failed(f: StartFacts) -> str:
    return f"llmlaunch: error: training failed (exit {f.rc}){_colon(f.failure)}; logs in {f.logs}"


def _lost_peer(f: StartFacts) -> Decision:
    """Named; requeued while the job has started fewer than max_restarts + 1 times (Slurm may have
    requeued it already, having found the host down), an elastic job then shrunk to its minimum."""
    job = f.job
    lines = [f"llmlaunch: error: lost a peer: {f.lost}"]
    if f.slurm_stop == CANCELLED:
        return Decision(f.rc or 1, lines + [f"llmlaunch: job {job} cancelled (scancel): not "
                                            "requeued"])
    if f.slurm_stop == REQUEUED_BY_SLURM:
        return Decision(0, lines + [
            f"llmlaunch: requeueing job {job} after a lost peer: Slurm requeued it already (it "
            "found the host down); it resumes from the last complete checkpoint"], shrink=True)
    if f.restart < f.max_restarts:
        decision = _requeue(f, lines + [
            f"llmlaunch: requeueing job {job} after a lost peer (start {f.restart + 2} of at "
            f"most {f.max_restarts + 1}); it resumes from the last complete checkpoint"],
            f"lost a peer: {f.lost}")
        decision.shrink = decision.requeue
        return decision
    return Decision(f.rc or 1, lines + [
        f"llmlaunch: error: not requeued: job {job} has started {f.restart + 1} times "
        f"(LLMLAUNCH_MAX_RESTARTS={f.max_restarts})", _failed(f)])


def _colon(text: str) -> str:
    return f": {text}" if text else ""


def _requeue(f: StartFacts, lines: list[str], why: str) -> Decision:
    """Requeue (`lines` say so in their last), unless this start trained no step and enough before
    it did not either: then `why` is the last of them."""
    if not f.progressed and len(f.fruitless_before) + 1 >= f.max_fruitless:
        return Decision(1, lines[:-1] + [fruitless_line(f.job, len(f.fruitless_before) + 1,
                                                        f.max_fruitless, why)])
    return Decision(0, lines, requeue=True)


def fruitless_line(job: str, count: int, bound: int, last: str) -> str:
    return (f"llmlaunch: error: not requeued: {count} starts of job {job} in a row trained no step "
            f"(LLMLAUNCH_MAX_STARTS_WITHOUT_PROGRESS={bound}); the last: {last}. Find why a start "
            "cannot reach its first step (the time limit against the start-up, a failing host) "
            "and resubmit")
