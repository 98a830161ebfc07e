"""The supervisor of a run, one for both ways to run it:

- Slurm: `python3 -m llmlaunch.launcher.job [RUN.yaml [RUN_DIR [section.key=value ...]]]` is the
  body of every job: the train.sbatch `plan --emit` writes and slurm/train.sh exec it after their
  #SBATCH lines (RUN_DIR defaults to RUN.yaml's folder; no RUN.yaml: the tiny CPU config into
  SUBMIT_DIR/runs/tiny-cpu). Outside a Slurm job the same command runs the ranks locally.
- Locally: `llmlaunch train` (and `preflight`, `validate`) call `launch`, the same supervisor.

One start, in order; a stop signal is held from the first line and acted on in every phase:
 1. run.yaml loaded once (with --set); for an elastic job (LLMLAUNCH_ELASTIC) the layout of the
    hosts this start got (launcher/elastic.py), handed to the ranks as --set arguments;
 2. the data checked against the model (launcher/run_data.py) and, locally, the DeepSpeed config
    derived: what the ranks would refuse is refused here, in one line;
 3. the run directory's lock (launcher/run_lock.py) and this start's line in starts.jsonl;
 4. preflight (LLMLAUNCH_PREFLIGHT=0 skips it): under Slurm on every rank (srun), locally the
    host's checks in this process (launcher/preflight.py: host_checks);
 5. the ranks: srun (Slurm), torch's elastic launcher (locally, launcher/local_ranks.py);
 6. the outcome (launcher/outcome.py): requeue, or exit.
A stop before 5 ends the start without starting the ranks. During 5 it becomes the stop request
the ranks read at their next step boundary (launcher/signals.py); under Slurm the job's record
says whether it was scancel, a requeue or preemption, or the time limit (launcher/slurm.py).
"""
if __name__ == "__main__":   # the job's first line: hold the stop signals before anything else
    import signal as _signal

    _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGUSR1, _signal.SIGTERM, _signal.SIGINT))

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from llmlaunch import run_files  # noqa: E402
from llmlaunch.config import (RunConfig, apply_overrides, load_run_config,  # noqa: E402
                              resolve_config_path)
from llmlaunch.metrics_file import last_step  # noqa: E402
from llmlaunch.topology.layout import Layout  # noqa: E402

from . import local_ranks, memory_fit, slurm, start_log  # noqa: E402
from .hostnet import free_port, master_address  # noqa: E402
from .liveness import read_lost  # noqa: E402
from .outcome import (CANCELLED, DEFAULT_MAX_RESTARTS,  # noqa: E402
                      DEFAULT_MAX_STARTS_WITHOUT_PROGRESS, REQUEUED_BY_SLURM, TIME_LIMIT)
from .outcome import StartFacts, decide, fruitless_line  # noqa: E402
from .run_lock import Owner, RunLock  # noqa: E402
from .signals import StopNow, StopSignals, clear_stop_request, request_stop  # noqa: E402

TRAIN_MODULE = "llmlaunch.launcher.rank"
PREFLIGHT_MODULE = "llmlaunch.launcher.preflight"
VALIDATE_MODULE = "llmlaunch.launcher.validate"
COMMANDS = {TRAIN_MODULE: "llmlaunch train", PREFLIGHT_MODULE: "llmlaunch preflight",
            VALIDATE_MODULE: "llmlaunch validate"}
# Seconds the ranks get after Ctrl-C to reach a step boundary and save (a step of a local run takes
# seconds; DeepSpeed's save of a small model, about one).
INTERRUPT_GRACE_S = 30.0
LOST_FILE_WAIT_S = 4.0   # srun can return before a failed rank has written who stopped answering


class DataRefused(ValueError):
    """The data does not fit the model: nothing is started."""


def env_int(environ, name: str, default: int) -> int:
    value = environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None


class Supervisor:
    """One start of a run (the module docstring). `alloc` None: local ranks."""

    def __init__(self, config_path: str, overrides: list[str], run_dir: Path, *, module: str,
                 nproc: int | None = None, alloc: slurm.Allocation | None = None,
                 environ=os.environ):
        self.config_path, self.overrides = config_path, list(overrides)
        self.run_dir, self.module, self.nproc = Path(run_dir), module, nproc
        self.alloc, self.environ = alloc, environ
        self.signals = StopSignals(environ)
        self.phase = "start"
        self.acted_on = 0            # how many of signals.received the supervisor acted on
        self.slurm_stop = ""
        self.child: subprocess.Popen | None = None
        self.killed = False
        self.launched = False
        self.launched_at: float | None = None
        self.interrupted_at: float | None = None
        self.lock_lost = ""
        self.lock: RunLock | None = None
        self.config: RunConfig | None = None
        self.layout: Layout | None = None    # the start's layout, built once in prepare()
        self.from_step = 0

    # -- output ------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        """Errors to stderr; under Slurm the rest to stdout (both end in slurm-JOB.out)."""
        error = line.startswith(("llmlaunch: error", "preflight, "))
        print(line, file=sys.stderr if (self.alloc is None or error) else sys.stdout, flush=True)

    # -- phases ------------------------------------------------------------------------------
    def prepare(self) -> RunConfig:
        """Phases 1 and 2 (ValueError: one line, nothing started)."""
        for name in ("LLMLAUNCH_MAX_RESTARTS", "LLMLAUNCH_MAX_STARTS_WITHOUT_PROGRESS",
                     "LLMLAUNCH_ELASTIC", "LLMLAUNCH_MASTER_PORT"):
            env_int(self.environ, name, 0)     # a bad value: refused now, not after training
        config = load_run_config(self.config_path, self.overrides)
        if self.alloc is not None and env_int(self.environ, "LLMLAUNCH_ELASTIC", 0) >= 1:
            config = self.elastic_layout(config)
        self.layout = memory_fit.fitting_layout(config, self.alloc or self.nproc)   # or refused
        if self.alloc is not None:   # one line here, not one error per rank
            self.layout.check_world_size(self.alloc.ntasks)
        from .run_data import prepare_run_data

        try:
            hosts = self.alloc.nodes if self.alloc is not None else 1
            prepare_run_data(config, self.layout, self.run_dir, hosts,
                             log=lambda line: self.say(f"llmlaunch: {line}"))
        except ValueError as exc:
            raise DataRefused(str(exc)) from None
        if self.alloc is None:
            from .ds_config import deepspeed_config

            if config.train.precision != "auto":    # a DeepSpeed config the ranks would refuse
                deepspeed_config(config, config.train.precision)
            world = self.layout.world_size
            if (self.nproc or world) != world:
                raise ValueError(f"--nproc {self.nproc} but the layout needs "
                                 f"{self.layout.product} ranks")
        return config

    def elastic_layout(self, config: RunConfig) -> RunConfig:
        from .elastic import describe_change, layout_for_world, overrides

        planned = config.layout_obj()
        try:
            effective = layout_for_world(planned, self.alloc.ntasks, self.alloc.tasks_per_node)
        except ValueError as exc:
            raise ValueError(f"elastic start: {exc}") from None
        if effective != planned:
            changes = overrides(planned, effective)
            self.overrides += changes     # the ranks get them as --set arguments
            self.say("llmlaunch: " + describe_change(planned, effective,
                                                     self.alloc.ntasks // self.alloc.tasks_per_node))
            config = apply_overrides(config, changes, source=self.config_path)
        return config

    def take_run_dir(self) -> None:
        """Phase 3: the lock, a clean slate for this start, its line in starts.jsonl."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        command = "the Slurm job" if self.alloc else COMMANDS.get(self.module, self.module)
        self.lock = RunLock(self.run_dir, Owner.here(command, self.environ)).acquire(say=self.say)
        (self.run_dir / run_files.LOGS).mkdir(exist_ok=True)
        clear_stop_request(self.run_dir)
        (self.run_dir / run_files.STOPPED).unlink(missing_ok=True)
        if self.module == TRAIN_MODULE:
            self.from_step = last_step(self.run_dir / run_files.METRICS)
            start_log.append_event(self.run_dir, {
                "event": "begin", "job": self.job_id, "start": self.restart,
                "host": self.lock.owner.host, "pid": os.getpid(), "step": self.from_step})

    @property
    def job_id(self) -> str | None:
        return self.alloc.job_id if self.alloc else None

    @property
    def restart(self) -> int:
        return self.alloc.restart if self.alloc else 0

    def fruitless_before(self) -> list[dict]:
        return start_log.fruitless_in_a_row(start_log.starts_of(start_log.read_events(self.run_dir)),
                                            self.job_id)

    def preflight_local(self) -> bool:
        from .preflight import format_table, host_checks

        checks = host_checks(self.config, self.layout, self.run_dir,
                             self.nproc or self.layout.world_size)
        if all(c.ok for c in checks):
            return True
        self.say(f"preflight, this host:\n{format_table(checks)}")
        self.say("llmlaunch: error: preflight failed on this host (above); nothing was started "
                 "(LLMLAUNCH_PREFLIGHT=0 skips it)")
        return False

    # -- signals -----------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return bool(self.signals.received)

    def react(self) -> None:
        """Act on the stop signals that came since the last call (the module docstring)."""
        if self.lock is not None and self.lock.lost and not self.lock_lost:
            self.lock_lost = self.lock.lost    # another start took the directory: stop, for good
            self.say(f"llmlaunch: error: the run directory was taken over by {self.lock_lost}; "
                     "stopping this start")
            if self.phase == "ranks" and self.module == TRAIN_MODULE:
                request_stop(self.run_dir, "", "the run directory was taken over")
            elif self.child is not None:
                self.kill_ranks()
        while self.acted_on < len(self.signals.received):
            name = self.signals.received[self.acted_on]
            self.acted_on += 1
            if name == "SIGINT" and self.interrupted_at is None:
                self.interrupted_at = time.monotonic()
            if self.acted_on == 1:
                self.first_stop(name)
            elif name == "SIGINT" and self.signals.interrupts >= 2 and self.child is not None:
                self.kill_ranks()   # a second Ctrl-C
        if (self.interrupted_at is not None and self.child is not None and not self.killed
                and self.phase == "ranks"
                and time.monotonic() - self.interrupted_at > INTERRUPT_GRACE_S):
            self.kill_ranks()       # Ctrl-C and no stop within the grace

    def first_stop(self, name: str) -> None:
        if self.alloc is not None:
            record, why = slurm.job_record(self.alloc.job_id)
            self.slurm_stop = slurm.classify_stop(record, self.alloc.restart)
            state = f"JobState={record.get('JobState')} Restarts={record.get('Restarts')} " \
                    f"Reason={record.get('Reason')}" if record else f"unreadable: {why}"
            self.say(f"llmlaunch: {name} received; Slurm's record of job {self.alloc.job_id}: "
                     f"{state} -> {self.slurm_stop}")
        if self.phase == "preflight" and self.child is not None:
            self.child.terminate()       # srun ends the preflight's tasks
        elif (self.phase == "ranks" and self.slurm_stop in (CANCELLED, REQUEUED_BY_SLURM, TIME_LIMIT)
              and not self.ranks_trained()):
            # Slurm ends the job in KillWait seconds; ranks still starting have nothing new to
            # save (they would stop before their first step): end them now, and say so
            self.kill_ranks()
        elif self.phase == "ranks":
            if self.module == TRAIN_MODULE:
                request_stop(self.run_dir, name, self.slurm_stop or "a stop signal")
            else:                        # preflight and validate ranks have nothing to save
                self.kill_ranks()

    def ranks_trained(self) -> bool:
        """The ranks of this start reached their training loop (rank 0 has written metrics.jsonl
        since they were started)."""
        try:
            return (self.run_dir / run_files.METRICS).stat().st_mtime >= self.launched_at
        except (FileNotFoundError, TypeError):
            return False

    def kill_ranks(self) -> None:
        if self.alloc is None:
            local_ranks.kill_everything_started(self.child)
        elif self.child is not None:
            self.child.kill()
        self.killed = True

    def wait(self, child: subprocess.Popen) -> int:
        """Wait for a child, acting on stop signals meanwhile; its exit code."""
        self.child = child
        try:
            while True:
                self.react()
                try:
                    return child.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            self.react()
            self.child = None

    # -- the ranks ---------------------------------------------------------------------------
    def rank_args(self) -> list[str]:
        return local_ranks.rank_arguments(self.config_path, str(self.run_dir), self.overrides)

    def run_ranks_local(self) -> tuple[int, str]:
        env = dict(self.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        nproc = self.nproc or self.layout.world_size
        cmd = local_ranks.elastic_command(nproc, self.module, self.rank_args(),
                                          free_port("127.0.0.1"))
        report = local_ranks.LauncherReport()
        self.launched_at = time.time()
        child = local_ranks.start_launcher(cmd, env)
        self.launched = True
        relay = threading.Thread(target=local_ranks.relay_stderr,
                                 args=(child.stderr, sys.stderr, report), daemon=True)
        relay.start()
        rc = self.wait(child)
        relay.join(timeout=5)
        return rc, report.describe()

    def slurm_env(self, master_addr: str, master_port: int) -> dict:
        env = {k: v for k, v in self.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
        env.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
                   LLMLAUNCH_LOST_FILE=str(self.lost_file))
        return {**slurm.TASK_ENV_DEFAULTS, **env}    # the job's own values win

    @property
    def lost_file(self) -> Path:
        return run_files.lost_peer_file(self.run_dir, self.alloc.job_id, self.alloc.restart)

    def preflight_slurm(self, env: dict) -> int:
        cmd = slurm.srun_command(run_files.preflight_task_output(self.run_dir), sys.executable,
                                 PREFLIGHT_MODULE, self.rank_args(), self.config.slurm, env)
        return self.wait(subprocess.Popen(cmd, env=env))

    def run_ranks_slurm(self, env: dict) -> tuple[int, str]:
        self.lost_file.unlink(missing_ok=True)
        output = run_files.train_task_output(self.run_dir, self.alloc.job_id, self.alloc.restart)
        self.launched_at = time.time()
        rc = self.wait(subprocess.Popen(slurm.srun_command(
            output, sys.executable, self.module, self.rank_args(), self.config.slurm, env), env=env))
        return rc, slurm.first_failure(output) if rc else ""

    # -- a start -----------------------------------------------------------------------------
    def run(self) -> int:
        """One start (the module docstring); the exit code."""
        self.signals.install()
        try:
            return self._run()
        finally:
            self.signals.restore()
            if self.launched:   # whatever a rank left (its ninja build, a rank of a dead launcher)
                local_ranks.kill_everything_started(None)
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> int:
        try:
            with self.signals.interruptible():
                self.config = self.prepare()
        except StopNow:
            return self.conclude(launched=False, rc=None)
        except DataRefused as exc:
            if self.alloc is None:
                raise
            self.say(f"llmlaunch: error: {exc}")
            self.say("llmlaunch: error: the data does not fit the model (above); nothing was started")
            return 2
        self.take_run_dir()
        if self.alloc is not None and self.module == TRAIN_MODULE:
            earlier = self.fruitless_before()
            bound = env_int(self.environ, "LLMLAUNCH_MAX_STARTS_WITHOUT_PROGRESS",
                            DEFAULT_MAX_STARTS_WITHOUT_PROGRESS)
            if len(earlier) >= bound:
                self.say(fruitless_line(self.job_id, len(earlier), bound, earlier[-1]["outcome"])
                         .replace("not requeued", "not starting again"))
                return self.end(1, "refused: no progress")
        preflight = self.environ.get("LLMLAUNCH_PREFLIGHT", "1") != "0"
        self.react()
        if self.stopping:
            return self.conclude(launched=False, rc=None)
        if self.alloc is None:
            self.phase = "preflight"
            if preflight and self.module == TRAIN_MODULE and not self.preflight_local():
                return self.end(1, "preflight failed")
            self.phase = "ranks"
            if self.stopping:
                return self.conclude(launched=False, rc=None)
            rc, failure = self.run_ranks_local()
            return self.conclude(launched=True, rc=rc, failure=failure)
        env = self.slurm_env(*self.master())
        for note in filter(None, [slurm.task_launch(self.config.slurm, env)[2]]):
            self.say(note)
        if preflight:
            self.phase = "preflight"
            rc = self.preflight_slurm(env)
            if self.stopping:
                return self.conclude(launched=False, rc=None)
            if rc != 0:
                self.say(f"llmlaunch: error: preflight failed; see {self.run_dir / run_files.LOGS}"
                         f"/preflight-{self.alloc.job_id}-*.out")
                return self.end(1, "preflight failed")
        self.phase = "ranks"
        if self.stopping:
            return self.conclude(launched=False, rc=None)
        rc, failure = self.run_ranks_slurm(env)
        return self.conclude(launched=True, rc=rc, failure=failure)

    def master(self) -> tuple[str, int]:
        """MASTER_ADDR (the first host as an address every host dials) and a free MASTER_PORT on
        this, the first, host; LLMLAUNCH_MASTER_ADDR / _PORT pin them. Prints the start's line."""
        a = self.alloc
        first = slurm.hostnames(a.nodelist)[0]
        addr = self.environ.get("LLMLAUNCH_MASTER_ADDR") or master_address(first, a.nodes)
        port = env_int(self.environ, "LLMLAUNCH_MASTER_PORT", 0) or free_port("")
        self.say(f"llmlaunch: job {a.job_id} restart {a.restart}: {a.ntasks} ranks on {a.nodes} "
                 f"node(s) ({a.nodelist}), master {first} {addr}:{port}, run dir {self.run_dir}")
        return addr, port

    def conclude(self, *, launched: bool, rc: int | None, failure: str = "") -> int:
        """Phase 6: the facts of this start, the decision, and its consequences."""
        self.react()
        stopped = read_json(self.run_dir / run_files.STOPPED)
        lost = ""
        if self.alloc is not None and launched and rc:   # no wait when Slurm is ending the job
            lost = read_lost(self.lost_file, 0.0 if self.stopping else LOST_FILE_WAIT_S)
        progressed = last_step(self.run_dir / run_files.METRICS) > self.from_step
        facts = StartFacts(
            slurm=self.alloc is not None, launched=launched, trained=self.ranks_trained(),
            rc=rc, stopped=stopped,
            stop_signal=self.signals.first, slurm_stop=self.slurm_stop,
            interrupts=self.signals.interrupts, killed=self.killed, lost=lost, failure=failure,
            job=self.job_id or "", restart=self.restart,
            max_restarts=env_int(self.environ, "LLMLAUNCH_MAX_RESTARTS", DEFAULT_MAX_RESTARTS),
            progressed=progressed, fruitless_before=self.fruitless_before(),
            lock_lost=self.lock_lost,
            max_fruitless=env_int(self.environ, "LLMLAUNCH_MAX_STARTS_WITHOUT_PROGRESS",
                                  DEFAULT_MAX_STARTS_WITHOUT_PROGRESS),
            logs=str(self.run_dir / run_files.LOGS), grace_s=INTERRUPT_GRACE_S)
        decision = decide(facts)
        for line in decision.lines:
            self.say(line)
        if decision.requeue:
            self.requeue()
        if decision.shrink:
            self.shrink()
        return self.end(decision.code, decision.lines[-1] if decision.lines else "finished")

    def requeue(self) -> None:
        job = self.alloc.job_id
        problem = slurm.requeue(job)
        if problem:   # Slurm requeued it first (it found a node down): "pending execution"
            self.say(f"llmlaunch: job {job} is requeued already ({problem})" if "pending" in problem
                     else f"llmlaunch: error: scontrol requeue {job} failed: {problem}")

    def shrink(self) -> None:
        """An elastic job after a lost peer: Slurm keeps a job's task count from its first start
        through a requeue, so it would wait for all its hosts; ask for the minimum instead."""
        job, minimum = self.alloc.job_id, env_int(self.environ, "LLMLAUNCH_ELASTIC", 0)
        if minimum >= 1:
            problem = slurm.shrink(job, minimum, minimum * self.alloc.tasks_per_node)
            self.say(f"llmlaunch: elastic: the requeued job asks for {minimum} host(s)" if not problem
                     else f"llmlaunch: error: elastic: scontrol update of job {job} failed: {problem}")

    def end(self, code: int, outcome: str) -> int:
        if self.module == TRAIN_MODULE and self.lock is not None:
            start_log.append_event(self.run_dir, {
                "event": "end", "job": self.job_id, "start": self.restart,
                "step": last_step(self.run_dir / run_files.METRICS),
                "outcome": outcome.removeprefix("llmlaunch: "), "code": code})
        return code


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def launch(config_arg: str, overrides: list[str], run_dir: str | None = None,
           nproc: int | None = None, module: str = TRAIN_MODULE) -> int:
    """`llmlaunch train|preflight|validate`: under srun (SLURM_PROCID set, no --nproc) this process
    is one rank; otherwise the local supervisor. Bad input is a ValueError (one line)."""
    config_path = str(resolve_config_path(config_arg).resolve())
    run_dir = Path(run_dir or default_run_dir(config_arg)).resolve()
    if "SLURM_PROCID" in os.environ and nproc is None:
        import importlib

        load_run_config(config_arg, overrides)   # bad input: one line, before the rank's import
        return importlib.import_module(module).main(
            ["--config", config_path, "--run-dir", str(run_dir),
             *[x for item in overrides for x in ("--set", item)]])
    return Supervisor(config_path, overrides, run_dir, module=module, nproc=nproc).run()


def default_run_dir(config_arg: str) -> Path:
    """The folder of a run.yaml, or runs/NAME for a built-in config name."""
    given = Path(config_arg)
    return given.resolve().parent if given.exists() else Path("runs") / given.stem


def main(argv: list[str] | None = None) -> int:
    """The Slurm job body: [RUN.yaml [RUN_DIR [section.key=value ...]]] (see the docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ
    submit_dir = Path(environ.get("SLURM_SUBMIT_DIR") or os.getcwd())
    config_arg = argv[0] if argv else "tiny-cpu"
    config_path = resolve_config_path(config_arg)
    if not config_path.is_file():
        print(f"llmlaunch: error: run config {config_arg!r} not found (give RUN.yaml as the first "
              "argument)", file=sys.stderr)
        return 2
    config_path = config_path.resolve()
    if len(argv) >= 2:
        run_dir = Path(argv[1])
    else:
        run_dir = config_path.parent if argv else submit_dir / "runs" / "tiny-cpu"
    try:
        alloc = slurm.Allocation.from_env(environ) if "SLURM_JOB_ID" in environ else None
        return Supervisor(str(config_path), argv[2:], run_dir.resolve(), module=TRAIN_MODULE,
                          alloc=alloc, environ=environ).run()
    except (ValueError, OSError) as exc:
        print(f"llmlaunch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
