"""Starting a run's ranks from the command line: `llmlaunch train|preflight|validate`.

Under srun (SLURM_PROCID set) the calling process is one rank. Otherwise `launch` starts dp*pp*tp
local ranks (or --nproc N, which must equal it) through torch's elastic launcher, forwards
SIGUSR1/SIGTERM to them (they checkpoint at the next step boundary and stop), and returns their exit
code. A rank that dies takes the others down: the elastic launcher tears the group down on the first
failure.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from llmlaunch.config import load_run_config, resolve_config_path

from .ds_config import deepspeed_config
from .run_data import given_data_path
from .trainer import REQUEUE_EXIT_CODE, STOPPED_FILE

# The per-rank modules each command starts.
TRAIN_MODULE = "llmlaunch.launcher.rank"
PREFLIGHT_MODULE = "llmlaunch.launcher.preflight"
VALIDATE_MODULE = "llmlaunch.launcher.validate"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_command(module: str, config_path: str, run_dir: str, overrides: list[str]) -> list[str]:
    cmd = ["-m", module, "--config", config_path, "--run-dir", run_dir]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


# torch.distributed.elastic's own log lines (W1125 13:51:10.612000 ... api.py:1028] ...)
_ELASTIC_LOG = re.compile(r"^[DIWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")


def relay_stderr(stream, out=sys.stderr) -> None:
    """Pass the ranks' stderr through, minus the elastic launcher's own logging and its closing
    ChildFailedError traceback: each rank already printed its error in one line and logged the
    traceback to RUN_DIR/logs; launch_local adds one summary line."""
    in_launcher_traceback = False
    for line in stream:
        if line.startswith("Traceback (most recent call last)"):
            in_launcher_traceback = True
        if in_launcher_traceback or _ELASTIC_LOG.match(line):
            continue
        out.write(line)
        out.flush()


def launch_local(nproc: int, config_path: str, run_dir: str, overrides: list[str],
                 module: str = TRAIN_MODULE) -> int:
    """Start nproc ranks of `module` with torch's elastic launcher on this machine; forward stop
    signals to them."""
    import psutil

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           *rank_command(module, config_path, run_dir, overrides)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    child = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    relay = threading.Thread(target=relay_stderr, args=(child.stderr,), daemon=True)
    relay.start()

    def forward(signum, frame):
        # the ranks, not the launcher: it would tear the group down instead of letting them save
        for proc in psutil.Process(child.pid).children(recursive=True):
            try:
                if module in " ".join(proc.cmdline()):
                    proc.send_signal(signum)
            except psutil.Error:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        rc = child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        rc = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    relay.join(timeout=5)
    if rc != 0:
        print(f"llmlaunch: error: the job failed (exit {rc}); each rank's log is in "
              f"{Path(run_dir) / 'logs'}", file=sys.stderr)
    if rc == 0 and (Path(run_dir) / STOPPED_FILE).is_file():
        print(f"llmlaunch: stopped with a checkpoint ({(Path(run_dir) / STOPPED_FILE).read_text().strip()});"
              " run the same command again to resume", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    return rc


def default_run_dir(config_arg: str) -> Path:
    """The folder of a run.yaml, or runs/NAME for a built-in config name."""
    given = Path(config_arg)
    return given.resolve().parent if given.exists() else Path("runs") / given.stem


def launch(config_arg: str, overrides: list[str], run_dir: str | None = None,
           nproc: int | None = None, module: str = TRAIN_MODULE) -> int:
    """Run `module`'s ranks for a run.yaml (or a built-in config name) with --set overrides: as this
    process under srun, else as nproc local ranks. Inputs the ranks would refuse are refused here
    first, in one line (ValueError)."""
    config = load_run_config(config_arg, overrides)
    world = config.layout_obj().world_size
    run_dir = str(Path(run_dir or default_run_dir(config_arg)).resolve())
    config_path = str(resolve_config_path(config_arg).resolve())
    if "SLURM_PROCID" in os.environ and nproc is None:
        import importlib

        entry = importlib.import_module(module).main
        return entry(["--config", config_path, "--run-dir", run_dir,
                      *[x for item in overrides for x in ("--set", item)]])
    given_data_path(config, Path(run_dir))  # fail here, not in every rank
    if config.train.precision != "auto":      # likewise a DeepSpeed config it would refuse
        deepspeed_config(config, config.train.precision)
    nproc = nproc or world
    if nproc != world:
        raise ValueError(f"--nproc {nproc} but the layout needs {config.layout_obj().product} "
                         "ranks")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return launch_local(nproc, config_path, run_dir, overrides, module)
