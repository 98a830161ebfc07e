"""`llmlaunch train` as a test's child: its own session, killed as a group when the test ends, so
no rank outlives it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from paths import TINY_CONFIG


class Job:
    """A `llmlaunch train --config CONFIG --run-dir RUN_DIR [--nproc N] --set ...` process group."""

    def __init__(self, run_dir, *sets, config=TINY_CONFIG, nproc=None, warnings=False):
        self.run_dir = Path(run_dir)
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "llmlaunch", "train", "--config", str(config),
               "--run-dir", str(run_dir)]
        if nproc:
            cmd += ["--nproc", str(nproc)]
        for item in sets:
            cmd += ["--set", item]
        # warnings=True: Python's default filters, what a user's run prints
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default" if warnings else "ignore")
        self.log_path = self.run_dir.parent / f"{self.run_dir.name}.out"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()

    def output(self):
        return self.log_path.read_text()

    def steps_logged(self):
        path = self.run_dir / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def wait_for_steps(self, count, timeout=240):
        deadline = time.monotonic() + timeout
        while self.steps_logged() < count:
            assert self.proc.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, "job made no progress"
            time.sleep(0.05)

    def ranks(self):
        return [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                if "llmlaunch.launcher.rank" in " ".join(p.cmdline())]


def losses(run_dir):
    """[(step, loss)] of a run's metrics.jsonl."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]
