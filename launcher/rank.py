"""One training rank: `python -m llmlaunch.rank --config RUN.yaml --run-dir DIR [--set k=v ...]`.

Started by `srun` (one task per rank: SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS), by torch's elastic
launcher (`llmlaunch train --nproc N`: RANK/LOCAL_RANK/WORLD_SIZE), or by the `deepspeed` launcher.
MASTER_ADDR and MASTER_PORT come from the environment.

The run: the model/ pipeline module under deepspeed.initialize with the config derived from
run.yaml, the prepared token shards through a seeded resumable loader, metrics.jsonl on rank 0,
checkpoints every N steps (complete-or-absent, see checkpoint.py), automatic resume, and a graceful
stop: SIGUSR1 or SIGTERM sets a flag that the ranks reduce at every step boundary, so all of them
stop after the same step, save it, write RUN_DIR/stopped.json and exit.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from .atomic import write_text_atomic
from .build_locks import check_build_locks
from .checkpoint import check_layout, latest_good, mark_complete, prune, tag_for_step
from .config import EFFECTIVE_CONFIG, RunConfig, dump_run_config, load_run_config
from .ds_config import deepspeed_config, resolve_precision

# Written by rank 0 into the run directory when the ranks stopped for a signal with a checkpoint of
# the last finished step. The ranks then exit 0 (srun's --kill-on-bad-exit would cut short the others'
# clean exit on any other code); the Slurm job body requeues on it and `llmlaunch train` exits with
# REQUEUE_EXIT_CODE (EX_TEMPFAIL: run again to resume).
STOPPED_FILE = "stopped.json"
REQUEUE_EXIT_CODE = 75
log = logging.getLogger("llmlaunch.rank")


def rank_environment(environ=os.environ) -> dict:
    """RANK, LOCAL_RANK, WORLD_SIZE from the launcher, mapped from Slurm's variables under srun.
    Under torch's elastic launcher (TORCHELASTIC_RUN_ID set) its RANK wins; otherwise a Slurm task's
    SLURM_PROCID does, whatever RANK the submitting shell may have exported."""
    env = {}
    if "SLURM_PROCID" in environ and "TORCHELASTIC_RUN_ID" not in environ:
        env = {"RANK": environ["SLURM_PROCID"], "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
               "WORLD_SIZE": environ["SLURM_NTASKS"]}
    merged = {**environ, **env}
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in merged]
    if missing:
        raise RuntimeError(f"llmlaunch.rank needs {', '.join(missing)} in the environment: start it "
                           "with `llmlaunch train --nproc N`, srun, or torchrun")
    env.setdefault("LOCAL_RANK", merged.get("LOCAL_RANK", "0"))
    env.setdefault("RANK", merged["RANK"])
    env.setdefault("WORLD_SIZE", merged["WORLD_SIZE"])
    return env


class StopRequest:
    """Set by SIGUSR1/SIGTERM (Slurm's warning before the time limit, scancel, preemption)."""

    def __init__(self):
        self.signal_name = ""

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)


def given_data_path(config: RunConfig, run_dir: Path) -> Path | None:
    """data.path resolved against the run directory (None: the shipped corpus); it must exist."""
    if not config.data.path:
        return None
    path = Path(config.data.path)
    path = path if path.is_absolute() else (run_dir / path)
    if not path.exists():
        raise ValueError(f"data.path {str(path)!r} does not exist: prepare it with `llmlaunch "
                         "data prepare --out DIR`, or leave data.path empty for the shipped corpus")
    return path


def ensure_data(config: RunConfig, run_dir: Path, rank: int) -> Path:
    """data.path, or the shipped corpus prepared once into RUN_DIR/data (by global rank 0, before
    the process group forms: the others wait for it at the rendezvous)."""
    given = given_data_path(config, run_dir)
    if given is not None:
        return given
    target = run_dir / "data"
    if rank == 0 and not (target / "manifest.json").is_file():
        from .data import default_corpus_path
        from .data.prepare import PrepareConfig, prepare

        prepare(PrepareConfig(inputs=[str(default_corpus_path())], out=target,
                              vocab_size=config.model.vocab, seed=config.train.seed, force=True,
                              progress=False))
    return target


def catalog_device(config: RunConfig):
    """run.yaml's cluster.gpu from the catalog (the cpu entry measures this host), or None."""
    from .topology.hardware import gpu

    try:
        return gpu(config.cluster.gpu)
    except ValueError:
        return None


def predicted(config: RunConfig, world: int, precision: str, device):
    """The planner's estimate for this run's layout on `device`."""
    from .topology import planner
    from .topology.hardware import Cluster

    cluster = Cluster(gpus=world, gpus_per_node=min(world, config.cluster.gpus_per_node), gpu=device)
    layout = config.layout_obj()
    options = planner.PlanOptions(global_batch=layout.global_batch, seq_len=config.model.seq_len,
                                  precision=precision)
    return planner.evaluate(config.model_spec(), cluster, layout, options)


def measured_memory_gib(torch) -> float:
    """Peak device memory on GPU; resident set size of this process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


class MetricsLog:
    """metrics.jsonl: one JSON object per optimizer step, appended and flushed (rank 0 only), and
    the same scalars to TensorBoard under RUN_DIR/tensorboard when it is installed.
    On resume, lines past the resumed step (steps whose effect the crash lost) are dropped; earlier
    lines are never rewritten."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.tensorboard = _tensorboard_writer(path.parent / "tensorboard")
        if path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if (record := _metrics_record(line)) is not None and record["step"] <= resume_step]
            write_text_atomic(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _metrics_record(line: str) -> dict | None:
    """One metrics.jsonl line, or None for a blank or torn one (a crash mid-write leaves a partial
    last line, which must not stop the resume)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "step" in record else None


def _tensorboard_writer(log_dir: Path):
    """A SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def setup_logging(run_dir: Path, rank: int) -> None:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(run_dir / "logs" / f"rank{rank:05d}.log")]
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.addFilter(lambda record: not record.exc_info)  # tracebacks only in the log file
        handlers.append(console)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format=f"%(asctime)s rank{rank} %(message)s", datefmt="%H:%M:%S")


class Trainer:
    """One rank's training run: engine, resume, steps, checkpoints, metrics, graceful stop."""

    def __init__(self, config: RunConfig, run_dir: Path):
        os.environ.update(rank_environment())
        self.config, self.run_dir = config, run_dir
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        lay = config.layout
        if lay.dp * lay.pp * lay.tp != self.world:
            raise ValueError(f"layout dp*pp*tp = {lay.dp}*{lay.pp}*{lay.tp} = "
                             f"{lay.dp * lay.pp * lay.tp} but the job has {self.world} ranks")
        self.global_batch = lay.micro_batch * lay.grad_accum * lay.dp
        ckpt_dir = Path(config.checkpoint.dir)
        self.ckpt_dir = ckpt_dir if ckpt_dir.is_absolute() else run_dir / ckpt_dir
        setup_logging(run_dir, self.rank)
        self.stop = StopRequest()
        self.stop.install()

    def build_engine(self) -> None:
        """Process groups, the pipeline module and the DeepSpeed engine."""
        import deepspeed
        import torch

        from .model import build_pipeline_model, init_distributed

        config, lay = self.config, self.config.layout
        init_distributed(timeout_s=config.train.collective_timeout_s)
        self.precision = resolve_precision(config, torch.cuda.is_available())
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        torch.manual_seed(config.train.seed)
        model = build_pipeline_model(config.model_spec(), pp=lay.pp, tp=lay.tp, dp=lay.dp,
                                     recompute=lay.recompute, seed=config.train.seed, dtype=dtype,
                                     hf_dir=config.checkpoint.init_hf or None)
        check_build_locks()
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=deepspeed_config(config, self.precision))

    def resume(self) -> int:
        """Load the newest complete checkpoint, if any; returns the step it finished."""
        found = latest_good(self.ckpt_dir)
        if found is None:
            return 0
        tag, record = found
        lay = self.config.layout
        check_layout(record, {"dp": lay.dp, "pp": lay.pp, "tp": lay.tp})
        self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        log.info("resumed from %s (step %d)", self.ckpt_dir / tag, record["step"])
        return record["step"]

    def batches(self, data_path: Path, start_step: int):
        """This replica's micro-batches from the step after start_step (seeded, exact resume)."""
        import torch

        from .data.loader import TokenWindowLoader
        from .model import next_token_batch

        lay = self.config.layout
        loader = TokenWindowLoader(data_path, self.config.model.seq_len, lay.micro_batch,
                                   dp_size=lay.dp, dp_rank=self.engine.grid.get_data_parallel_id(),
                                   seed=self.config.train.seed,
                                   consumed_samples=start_step * self.global_batch)
        return (next_token_batch(torch.from_numpy(tokens)) for tokens in loader)

    def save(self, step: int) -> None:
        """Every rank saves, all meet, then rank 0 marks the checkpoint complete (checkpoint.py)."""
        import torch.distributed as dist

        tag = tag_for_step(step)
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state={"step": step},
                                    save_latest=False)
        dist.barrier()
        if self.rank == 0:
            mark_complete(self.ckpt_dir, tag, {
                "tag": tag, "step": step, "layout": dict(vars(self.config.layout)),
                "consumed_samples": step * self.global_batch})
            prune(self.ckpt_dir, self.config.checkpoint.keep)
        dist.barrier()
        log.info("checkpoint %s saved", self.ckpt_dir / tag)

    def stop_agreed(self, flag) -> bool:
        """True on every rank when any rank received a stop signal (a MAX all-reduce)."""
        import torch.distributed as dist

        flag.fill_(1.0 if self.stop.requested else 0.0)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    def run(self) -> int:
        """Run (or resume) training; returns the process exit code."""
        import torch

        config, rank = self.config, self.rank
        if rank == 0:
            (self.run_dir / STOPPED_FILE).unlink(missing_ok=True)
            write_text_atomic(self.run_dir / EFFECTIVE_CONFIG,
                              dump_run_config(config, "# the config this run used (run.yaml + --set)"))
        data_path = ensure_data(config, self.run_dir, rank)
        self.build_engine()
        start_step = self.resume()
        batches = self.batches(data_path, start_step)
        monitor = StepMonitor(config, self.run_dir, self.world, self.precision, start_step) \
            if rank == 0 else None
        step, last_saved = start_step, start_step
        flag = torch.zeros(1, device=self.engine.device)
        try:
            while step < config.train.steps:
                if self.stop_agreed(flag):
                    if step > last_saved:
                        self.save(step)
                    signal_name = self.stop.signal_name or "another rank"
                    log.info("stop requested (%s): stopped after step %d with a checkpoint; run "
                             "again to resume", signal_name, step)
                    if rank == 0:
                        write_text_atomic(self.run_dir / STOPPED_FILE,
                                          json.dumps({"step": step, "signal": signal_name}) + "\n")
                    return 0
                lr = self.engine.optimizer.param_groups[0]["lr"]  # the rate this step applies
                started = time.perf_counter()
                loss = float(self.engine.train_batch(data_iter=batches))
                elapsed = time.perf_counter() - started
                step += 1
                if monitor is not None:
                    monitor.record(step, loss, lr, self.engine.get_global_grad_norm(), elapsed)
                if config.checkpoint.every and step % config.checkpoint.every == 0:
                    self.save(step)
                    last_saved = step
            if step > last_saved:
                self.save(step)
        finally:
            if monitor is not None:
                monitor.close()
        return 0


class StepMonitor:
    """Rank 0's view of the run: the planner's prediction at start, metrics.jsonl and the progress
    bar per step, measured against predicted at the end."""

    def __init__(self, config: RunConfig, run_dir: Path, world: int, precision: str, start_step: int):
        from .topology.flops import hardware_flops_per_token, model_flops_per_token

        spec, lay = config.model_spec(), config.layout
        self.config, self.world = config, world
        device = catalog_device(config)
        self.estimate = predicted(config, world, precision, device) if device is not None else None
        if self.estimate is not None and self.estimate.estimated:
            log.info("planner predicts %.3f s per step, %.2f GiB on the worst stage (%s)",
                     self.estimate.step.total_s, self.estimate.worst_stage.total / 2**30,
                     config.cluster.gpu)
        self.tokens_per_step = config.layout_obj().global_batch * spec.seq_len
        self.hardware_flops = hardware_flops_per_token(spec, lay.recompute) * self.tokens_per_step
        self.model_flops = model_flops_per_token(spec) * self.tokens_per_step
        self.peak_flops = device.peak_tflops * 1e12 if device is not None else None
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", start_step)
        self.progress = _progress(0, start_step, config.train.steps)
        self.step_times: list[float] = []

    def record(self, step: int, loss: float, lr: float, grad_norm, elapsed: float) -> None:
        import torch

        self.step_times.append(elapsed)
        record = {"step": step, "loss": loss, "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "tokens_per_s": self.tokens_per_step / elapsed,
                  "tflops_per_gpu": self.hardware_flops / elapsed / self.world / 1e12,
                  "mfu": (self.model_flops / elapsed / self.world / self.peak_flops
                          if self.peak_flops else None),
                  "step_time_s": elapsed, "memory_gib": measured_memory_gib(torch)}
        self.metrics.write(record)
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
        every = self.config.train.log_every
        if every and step % every == 0:
            log.info("step %d loss %.4f lr %.3g grad_norm %s %.3f s", step, loss, lr,
                     record["grad_norm"], elapsed)

    def close(self) -> None:
        import torch

        self.progress.close()
        self.metrics.close()
        est = self.estimate
        if est is not None and est.estimated and len(self.step_times) > 1:
            measured_s = statistics.median(self.step_times[1:])
            log.info("measured %.3f s per step (median after the first) vs predicted %.3f s "
                     "(%+.0f%%); memory %.2f GiB vs predicted %.2f GiB for the worst stage",
                     measured_s, est.step.total_s, 100 * (measured_s / est.step.total_s - 1),
                     measured_memory_gib(torch), est.worst_stage.total / 2**30)


def train(config: RunConfig, run_dir: Path) -> int:
    """Run (or resume) training on this rank; returns the process exit code."""
    return Trainer(config, run_dir).run()


def _progress(rank: int, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=rank != 0, unit="step", file=sys.stderr,
                dynamic_ncols=True)


def parse_rank_arguments(argv: list[str] | None, module: str, description: str) -> tuple[RunConfig, Path]:
    """What every per-rank entry (rank, preflight, validate) takes: --config, --run-dir, --set.
    Returns the checked config and the run directory (created); bad input raises ValueError."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-dir", help="default: the folder of --config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_run_config(args.config, args.set)
    run_dir = Path(args.run_dir or Path(args.config).resolve().parent).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return config, run_dir


def main(argv: list[str] | None = None) -> int:
    try:
        config, run_dir = parse_rank_arguments(argv, "llmlaunch.rank", __doc__.split("\n")[0])
    except ValueError as exc:
        print(f"llmlaunch: error: {exc}", file=sys.stderr)
        return 2
    try:
        code = train(config, run_dir)
        from .model.distributed import finish_distributed

        finish_distributed()
        return code
    except Exception as exc:  # noqa: BLE001 - one line on stderr; the traceback goes to the log
        log.exception("training failed")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"llmlaunch: error on rank {os.environ.get('RANK', '?')}: {first_line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
