"""One rank's training run: the engine (engine.py), the prepared token shards through a seeded
resumable loader, metrics.jsonl on rank 0 (metrics.py), checkpoints every N steps (complete-or-absent,
checkpoint.py), automatic resume, and a graceful stop: a stop signal, or the supervisor's stop
request (signals.py), sets a flag that the ranks reduce at every step boundary, so all of them stop
after the same step, save it, write RUN_DIR/stopped.json and exit.

`python -m llmlaunch.launcher.rank` (rank.py) runs `train` in each rank process.
"""
from __future__ import annotations

import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from llmlaunch import run_files
from llmlaunch.atomic import write_text_atomic
from llmlaunch.config import EFFECTIVE_CONFIG, RunConfig, dump_run_config

from .canonical import adam_step_count, load_canonical_into, save_canonical, write_meta
from .checkpoint import (LAYOUT_STATE_KEYS, CheckpointError, all_parameters_of_model,
                         checkpoint_state_layout, describe_state, latest_good, mark_complete, prune,
                         same_state_layout, set_schedule_position, tag_for_step)
from .entry import enter_rank
from .metrics import METRICS_FILE, MetricsLog
from .placement import record_placement
from .run_data import ensure_data
from .signals import STOP

# Written by rank 0 into the run directory when the ranks stopped for a signal with a checkpoint of
# the last finished step. The ranks then exit 0 (srun's --kill-on-bad-exit would cut short the others'
# clean exit on any other code); the supervisor (launcher/job.py) reads it, then requeues the Slurm
# job or exits with REQUEUE_EXIT_CODE (EX_TEMPFAIL: run again to resume).
STOPPED_FILE = run_files.STOPPED
REQUEUE_EXIT_CODE = 75
log = logging.getLogger("llmlaunch.rank")


def measured_memory_gib(torch) -> float:
    """Peak device memory on GPU; resident set size of this process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def setup_logging(run_dir: Path, rank: int) -> None:
    log_file = run_files.rank_log(run_dir, rank)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(log_file)]
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.addFilter(lambda record: not record.exc_info)  # tracebacks only in the log file
        handlers.append(console)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format=f"%(asctime)s rank{rank} %(message)s", datefmt="%H:%M:%S")


class Trainer:
    """One rank's training run: engine, resume, steps, checkpoints, metrics, graceful stop."""

    def __init__(self, config: RunConfig, run_dir: Path):
        self.rank, self.world = enter_rank(config)
        self.config, self.run_dir = config, run_dir
        self.layout = config.layout_obj()
        ckpt_dir = Path(config.checkpoint.dir)
        self.ckpt_dir = ckpt_dir if ckpt_dir.is_absolute() else run_dir / ckpt_dir
        setup_logging(run_dir, self.rank)
        self.stop = STOP
        self.stop.hold()   # held since the process started (rank.py); again for in-process callers
        record_placement(run_dir, self.layout, self.rank, self.world)   # RUN_DIR/ranks.json

    def engine_kind(self) -> str:
        """The engine to build: the layout's, except that a pp = 1 run resuming a checkpoint the
        pipeline engine wrote at this very layout (llmlaunch 0.1's) keeps that engine, whose
        files DeepSpeed can then load as they are."""
        found = latest_good(self.ckpt_dir)
        if found is not None:
            saved = checkpoint_state_layout(found[1])
            if saved["engine"] == "pipeline" and same_state_layout(saved, self.state_layout("pipeline")):
                return "pipeline"
        return self.layout.engine

    def state_layout(self, engine: str) -> dict:
        return {**{k: getattr(self.layout, k) for k in LAYOUT_STATE_KEYS}, "engine": engine}

    def resume(self) -> int:
        """Load the newest complete checkpoint, if any; returns the step it finished. Written at
        this layout and engine: DeepSpeed loads its own files (bit-exact). Written at another:
        its layout-free state is moved onto this layout (canonical.py), unless
        checkpoint.reshard is never."""
        import time

        found = latest_good(self.ckpt_dir)
        if found is None:
            return 0
        tag, record = found
        saved = checkpoint_state_layout(record)
        here = self.state_layout(self.run.kind)
        if same_state_layout(saved, here):
            self.run.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
            log.info("resumed from %s (step %d)", self.ckpt_dir / tag, record["step"])
            return record["step"]
        if self.config.checkpoint.reshard == "never":
            raise CheckpointError(f"checkpoint {tag} was written with {describe_state(saved)} but "
                                  f"the run uses {describe_state(here)}, and checkpoint.reshard is "
                                  "never: set it to auto to move the checkpoint, or restore the "
                                  "original layout")
        step = record["step"]
        written_batch = record.get("global_batch", record.get("consumed_samples", 0) // max(step, 1))
        if written_batch != self.layout.global_batch:
            raise CheckpointError(f"checkpoint {tag} trained with a global batch of {written_batch} "
                                  f"sequences, the run uses {self.layout.global_batch}: a moved "
                                  "checkpoint keeps its global batch (set layout.grad_accum so "
                                  "that micro_batch * grad_accum * dp equals it)")
        started = time.perf_counter()
        load_canonical_into(self.run, self.ckpt_dir / tag)
        set_schedule_position(self.run.engine, step, self.layout.global_batch)
        log.info("resharded %s (step %d) from %s to %s in %.2f s", self.ckpt_dir / tag, step,
                 describe_state(saved), describe_state(here), time.perf_counter() - started)
        return step

    def batches(self, data_path: Path, start_step: int):
        """This replica's micro-batches from the step after start_step (seeded, exact resume)."""
        import torch

        from llmlaunch.data.loader import TokenWindowLoader
        from llmlaunch.model import next_token_batch

        lay = self.layout
        loader = TokenWindowLoader(data_path, self.config.model.seq_len, lay.micro_batch,
                                   dp_size=lay.dp, dp_rank=self.run.dp_rank,
                                   seed=self.config.train.seed,
                                   consumed_samples=start_step * lay.global_batch,
                                   dtype=self.config.data.dtype or None,
                                   vocab=self.config.model.vocab,
                                   samples_per_step=lay.global_batch)
        return (next_token_batch(torch.from_numpy(tokens)) for tokens in loader)

    def save(self, step: int) -> None:
        """Every rank saves, all meet, then rank 0 marks the checkpoint complete (checkpoint.py)."""
        import torch.distributed as dist

        tag = tag_for_step(step)
        self.run.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state={"step": step},
                                        save_latest=False)
        module = self.run.engine.module
        save_canonical(self.run, self.ckpt_dir / tag, step, module.tp_group.rank,
                       module.tp_group.size)
        dist.barrier()
        if self.rank == 0:
            names = sorted({name for name, _ in all_parameters_of_model(self.config)})
            write_meta(self.ckpt_dir / tag, spec=self.run.spec, layout=self.layout.to_dict(),
                       engine=self.run.kind, step=step, adam_steps=adam_step_count(self.run.engine),
                       names=names, tp=self.layout.tp)
            mark_complete(self.ckpt_dir, tag, {
                "tag": tag, "step": step, "layout": dict(vars(self.config.layout)),
                "engine": self.run.kind, "global_batch": self.layout.global_batch,
                "consumed_samples": step * self.layout.global_batch,
                "model": self.run.spec.to_dict()})
            prune(self.ckpt_dir, self.config.checkpoint.keep)
        dist.barrier()
        log.info("checkpoint %s saved", self.ckpt_dir / tag)

    def stop_agreed(self, flag) -> bool:
        """True on every rank when any rank received a stop signal, or rank 0 found the supervisor's
        stop request (signals.py), at this step boundary (a MAX all-reduce)."""
        import torch.distributed as dist

        if self.rank == 0:
            self.stop.take_request(self.run_dir)
        flag.fill_(1.0 if self.stop.requested else 0.0)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    def record_stop(self, step: int, checkpoint: str | None) -> None:
        """Log the agreed stop and (rank 0) write RUN_DIR/stopped.json: {step, signal, checkpoint}
        (the tag the next start resumes from; null when there is none)."""
        signal_name = self.stop.signal_name or "another rank"
        if checkpoint:
            log.info("stop requested (%s): stopped after step %d, checkpoint %s; run again to "
                     "resume", signal_name, step, checkpoint)
        else:
            log.info("stop requested (%s) before the first step: nothing to checkpoint; run again "
                     "to start", signal_name)
        if self.rank == 0:
            write_text_atomic(self.run_dir / STOPPED_FILE, json.dumps(
                {"step": step, "signal": signal_name, "checkpoint": checkpoint}) + "\n")

    def write_effective_config(self) -> None:
        """RUN_DIR/run.effective.yaml: run.yaml with the --set overrides and train.precision
        resolved, what this run used (the report reads it)."""
        used = copy.deepcopy(self.config)
        used.train.precision = self.run.precision
        write_text_atomic(self.run_dir / EFFECTIVE_CONFIG,
                          dump_run_config(used, "# the config this run used (run.yaml + --set, "
                                                "precision resolved)"))

    def run_training(self) -> int:
        """Run (or resume) training; returns the process exit code."""
        import torch

        from .engine import build_engine

        config, rank = self.config, self.rank
        if rank == 0:
            (self.run_dir / STOPPED_FILE).unlink(missing_ok=True)
        data_path = ensure_data(config, self.run_dir, rank)
        self.run = build_engine(config, kind=self.engine_kind())
        self.stop.release()   # a signal that came during start-up is acted on at step 0
        if rank == 0:
            self.write_effective_config()
        start_step = self.resume()
        batches = self.batches(data_path, start_step)
        monitor = StepMonitor(config, self.run_dir, self.world, self.run.precision, start_step) \
            if rank == 0 else None
        step, last_saved = start_step, start_step
        flag = torch.zeros(1, device=self.run.device)
        try:
            while step < config.train.steps:
                if self.stop_agreed(flag):
                    if step > last_saved:
                        self.save(step)
                        last_saved = step
                    self.record_stop(step, tag_for_step(last_saved) if last_saved else None)
                    return 0
                lr = self.run.lr  # the rate this step applies
                started = time.perf_counter()
                loss = self.run.train_step(batches)
                elapsed = time.perf_counter() - started
                step += 1
                if monitor is not None:
                    monitor.record(step, loss, lr, self.run.grad_norm, elapsed)
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
        from llmlaunch.topology.flops import hardware_flops_per_token, model_flops_per_token
        from llmlaunch.topology.plan_inputs import estimate_layout

        spec, lay = config.model_spec(), config.layout_obj()
        self.config, self.world = config, world
        self.estimate, self.peak_flops = None, None
        try:
            inputs = config.plan_inputs(precision)
            self.estimate = estimate_layout(inputs, lay)
            self.peak_flops = inputs.cluster.gpu.peak_tflops * 1e12
            log.info("planner predicts %.3f s per step, %.2f GiB on the worst stage (%s)",
                     self.estimate.step.total_s, self.estimate.worst_stage.total / 2**30,
                     config.cluster.gpu)
        except ValueError as exc:  # a cluster.gpu the catalog does not know: no prediction
            log.info("no prediction: %s", exc)
        self.tokens_per_step = lay.global_batch * spec.seq_len
        self.hardware_flops = hardware_flops_per_token(spec, lay.recompute) * self.tokens_per_step
        self.model_flops = model_flops_per_token(spec) * self.tokens_per_step
        self.metrics = MetricsLog(run_dir / METRICS_FILE, start_step)
        self.progress = _progress(start_step, config.train.steps)
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
        if est is not None and len(self.step_times) > 1:
            measured_s = statistics.median(self.step_times[1:])
            log.info("measured %.3f s per step (median after the first) vs predicted %.3f s "
                     "(%+.0f%%); memory %.2f GiB vs predicted %.2f GiB for the worst stage",
                     measured_s, est.step.total_s, 100 * (measured_s / est.step.total_s - 1),
                     measured_memory_gib(torch), est.worst_stage.total / 2**30)


def train(config: RunConfig, run_dir: Path) -> int:
    """Run (or resume) training on this rank; returns the process exit code."""
    return Trainer(config, run_dir).run_training()


def _progress(start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)
