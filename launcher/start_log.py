"""RUN_DIR/starts.jsonl: one line when a start of the run begins and one when it ends, so that the
supervisor can tell a run that goes on from one that is started again and again without training a
step (a time limit shorter than the start-up, a preemption loop, a host that fails every start), and
a person can read the run's history.

    {"event": "begin", "job": "123", "start": 0, "host": "node1", "pid": 4711, "time": ..., "step": 0}
    {"event": "end", "job": "123", "start": 0, "time": ..., "step": 12, "outcome": "stopped ..."}

`step` is the run's last step in metrics.jsonl at that moment. A start made progress when the
step at its end is past the step at its beginning; a start whose supervisor was killed before its
end line (Slurm's SIGKILL after KillWait) is judged by the next start's beginning. Lines are
appended whole (O_APPEND); a torn line is skipped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from llmlaunch.run_files import STARTS


def append_event(run_dir: Path, event: dict) -> None:
    with open(Path(run_dir) / STARTS, "a") as f:
        f.write(json.dumps({**event, "time": round(time.time(), 3)}) + "\n")


def read_events(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / STARTS
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") in ("begin", "end"):
            events.append(event)
    return events


def starts_of(events: list[dict]) -> list[dict]:
    """One record per start, in order of beginning: {job, start, from_step, to_step, outcome};
    to_step None when the start has no end line and no later start began."""
    starts: list[dict] = []
    for event in events:
        key = (event.get("job"), event.get("start"))
        if event["event"] == "begin":
            if starts and starts[-1]["to_step"] is None:   # the previous one never said it ended
                starts[-1]["to_step"] = event.get("step", 0)
                starts[-1]["outcome"] = "ended without a word (its supervisor was killed)"
            starts.append({"job": key[0], "start": key[1], "from_step": event.get("step", 0),
                           "to_step": None, "outcome": ""})
        elif starts and (starts[-1]["job"], starts[-1]["start"]) == key:
            starts[-1]["to_step"] = event.get("step", 0)
            starts[-1]["outcome"] = event.get("outcome", "")
    return starts


def made_progress(start: dict) -> bool:
    return start["to_step"] is not None and start["to_step"] > start["from_step"]


def fruitless_in_a_row(starts: list[dict], job: str | None) -> list[dict]:
    """The latest starts of Slurm job `job` that trained no step, newest last, back to the last
    start that did (or to the job's first). Only ended starts count."""
    run = []
    for start in reversed(starts):
        if start["job"] != job or start["to_step"] is None:
            continue
        if made_progress(start):
            break
        run.append(start)
    return list(reversed(run))
