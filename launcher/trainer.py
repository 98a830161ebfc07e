"""One rank's training run: the rank's context (model/rank_context.py, built once), the engine
(engine.py), the prepared token shards through a seeded resumable loader, metrics.jsonl on rank 0
(metrics.py), the checkpoint store (checkpoints/store.py: verified resume, saves beside the loop,
pruning), and a graceful stop: a stop signal, or the supervisor's stop request (signals.py), sets a
flag that the ranks reduce at every step boundary, so all of them stop after the same step, save it,
write RUN_DIR/stopped.json and exit.

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

from .checkpoints.store import CheckpointStore, set_schedule_position
from .checkpoints.tags import tag_for_step
from .engine import rank_context
from .guard import OK, SkipRecord
from .guarded_step import StepGuard
from .stragglers import StragglerWatch
from .entry import start_heartbeat
from .metrics import METRICS_FILE, MetricsLog
from .moe_metrics import moe_log_text, step_moe_stats
from .placement import record_placement
from .run_data import ensure_data, open_eval_index, open_training_index
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
        self.ctx = rank_context(config)
        self.rank, self.world, self.layout = self.ctx.rank, self.ctx.world, self.ctx.layout
        self.config, self.run_dir = config, run_dir
        self.store = CheckpointStore.of_run(config, run_dir, self.ctx)
        setup_logging(run_dir, self.rank)
        self.stop = STOP
        self.stop.hold()   # held since the process started (rank.py); again for in-process callers
        record_placement(run_dir, self.layout, self.rank, self.world)   # RUN_DIR/ranks.json

    def batches(self, index, start_step: int):
        """This replica's micro-batches from the step after start_step: step t reads global
        samples [t * global_batch, (t + 1) * global_batch) of the sample index (exact resume on
        any layout: data/batch_stream.py); under context parallelism this rank's chunks of
        them (every cp rank of a replica reads the same samples)."""
        import torch

        from llmlaunch.data.batch_stream import ReplicaBatches
        from llmlaunch.model import next_token_batch

        lay = self.layout
        stream = ReplicaBatches(index, global_batch=lay.global_batch, micro_batch=lay.micro_batch,
                                dp=lay.dp, dp_rank=self.run.dp_rank, start_step=start_step,
                                vocab=self.config.model.vocab, label=str(index.directory))
        return (self.run.local_batch(next_token_batch(torch.from_numpy(tokens)))
                for tokens in stream)

    def eval_loss(self, eval_index) -> float:
        """The evaluation loss (launcher/evaluation.py) over train.eval_batches global batches."""
        import torch

        from llmlaunch.data.batch_stream import eval_batches
        from llmlaunch.model import next_token_batch

        from .evaluation import evaluate

        lay, count = self.layout, self.config.train.eval_batches
        stream = eval_batches(eval_index, batches=count, global_batch=lay.global_batch,
                              micro_batch=lay.micro_batch, dp=lay.dp, dp_rank=self.run.dp_rank)
        return evaluate(self.run, (self.run.local_batch(next_token_batch(torch.from_numpy(t)))
                                   for t in stream), count)

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
        specs = ensure_data(config, self.layout, self.run_dir, rank)
        self.ctx.start(config.train.collective_timeout_s)
        start_heartbeat()
        store = self.store
        store.choose()            # collective: the newest verified tag, checked against the run
        self.run = build_engine(config, self.ctx, kind=store.engine_for(self.layout),
                                schedule=store.schedule())
        self.stop.release()   # a signal that came during start-up is acted on at step 0
        if rank == 0:
            self.write_effective_config()
        start_step = store.resume(self.run)
        record = SkipRecord.read(self.run_dir)
        guard = StepGuard(config, self.run_dir, self.run, rank, record)
        watch = StragglerWatch(config.train.stragglers, self.run.engine.module, rank,
                               peers=(self.run.stage, self.run.engine.module.tp_group.rank))
        if record.applied_steps(start_step) != start_step:   # skipped steps moved no schedule
            set_schedule_position(self.run.engine, record.applied_steps(start_step),
                                  self.layout.global_batch)
        index = open_training_index(config, self.layout, self.run_dir, specs)
        eval_index = open_eval_index(config, self.layout, self.run_dir, specs) if config.train.eval_every \
            else None
        batches = self.batches(index, start_step)
        monitor = StepMonitor(config, self.layout, self.run_dir, self.world, self.run.precision,
                              start_step, index.samples_by_source) if rank == 0 else None
        step, last_saved = start_step, start_step
        flag = torch.zeros(1, device=self.run.device)
        try:
            while step < config.train.steps:
                if self.stop_agreed(flag):
                    if step > last_saved:
                        store.save(self.run, step)
                        last_saved = step
                    store.wait()
                    self.record_stop(step, tag_for_step(last_saved) if last_saved else None)
                    return 0
                if record.skip_to(step) != step:   # batches a guard decision skipped
                    step = skip_batches(step, min(record.skip_to(step), config.train.steps))
                    batches = self.batches(index, step)
                    continue
                lr = self.run.lr  # the rate this step applies
                guard.before_step(step + 1)
                started = time.perf_counter()
                loss = self.run.train_step(batches)
                elapsed = time.perf_counter() - started
                step += 1
                grad_norm = self.run.grad_norm
                action, verdict = guard.after_step(step, store)
                slow = watch.after_step(step)
                moe = step_moe_stats(self.run)   # collective; None for a dense model
                evaluated = self.eval_loss(eval_index) if eval_index is not None and \
                    step % config.train.eval_every == 0 else None
                if monitor is not None:
                    monitor.record(step, loss, lr, grad_norm, elapsed, evaluated, moe,
                                   guard=verdict, stragglers=slow)
                store.after_step(step, loss, grad_norm, healthy=action == OK)
                if config.checkpoint.every and step % config.checkpoint.every == 0:
                    store.save(self.run, step)
                    last_saved = step
            if step > last_saved:
                store.save(self.run, step)
            store.wait()
        finally:
            if monitor is not None:
                monitor.close()
        return 0


class StepMonitor:
    """Rank 0's view of the run: the planner's prediction at start, metrics.jsonl and the progress
    bar per step, measured against predicted at the end."""

    def __init__(self, config: RunConfig, layout, run_dir: Path, world: int, precision: str,
                 start_step: int, samples_by_source=None):
        from llmlaunch.topology.flops import hardware_flops_per_token, model_flops_per_token
        from llmlaunch.topology.plan_inputs import estimate_layout

        spec, lay = config.model_spec(), layout
        self.config, self.world = config, world
        self.estimate, self.peak_flops = None, None
        try:
            inputs = config.plan_inputs(precision, layout=lay)
            self.estimate = estimate_layout(inputs, lay)
            self.peak_flops = inputs.cluster.gpu.peak_tflops * 1e12
            log.info("planner predicts %.3f s per step, %.2f GiB on the worst stage (%s)",
                     self.estimate.step.total_s, self.estimate.worst_stage.total / 2**30,
                     config.cluster.gpu)
        except ValueError as exc:  # a cluster.gpu the catalog does not know: no prediction
            log.info("no prediction: %s", exc)
        self.tokens_per_step = lay.global_batch * spec.seq_len
        self.global_batch, self.samples_by_source = lay.global_batch, samples_by_source
        self.hardware_flops = hardware_flops_per_token(spec, lay.recompute) * self.tokens_per_step
        self.model_flops = model_flops_per_token(spec) * self.tokens_per_step
        self.metrics = MetricsLog(run_dir / METRICS_FILE, start_step, config)
        self.progress = _progress(start_step, config.train.steps)
        self.step_times: list[float] = []

    def record(self, step: int, loss: float, lr: float, grad_norm, elapsed: float,
               eval_loss: float | None = None, moe: dict | None = None, guard: dict | None = None,
               stragglers: list | None = None) -> None:
        import torch

        self.step_times.append(elapsed)
        record = {"step": step, "loss": loss, "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else None,
                  "tokens_per_s": self.tokens_per_step / elapsed,
                  "tflops_per_gpu": self.hardware_flops / elapsed / self.world / 1e12,
                  "mfu": (self.model_flops / elapsed / self.world / self.peak_flops
                          if self.peak_flops else None),
                  "step_time_s": elapsed, "memory_gib": measured_memory_gib(torch)}
        if self.estimate is not None:   # what the run page plots against (report/run_page.py)
            record["step_time_predicted_s"] = self.estimate.step.total_s
        if eval_loss is not None:
            record["eval_loss"] = eval_loss
        if moe is not None:          # the router's losses and per-expert load (moe_metrics.py)
            record.update(moe)
        if guard is not None:   # the guard's decision on this step (launcher/guard.py)
            record["guard"] = guard
        if stragglers:   # ranks slower than the median (launcher/stragglers.py)
            record["stragglers"] = stragglers
        shares = moe_log_text(moe) if moe is not None else ""
        if self.samples_by_source is not None:   # cumulative samples per source (the blend's)
            record["samples_by_source"] = self.samples_by_source(step * self.global_batch)
            total = sum(record["samples_by_source"].values())
            shares += " | data: " + ", ".join(f"{name} {count / total:.1%}" for name, count in
                                         record["samples_by_source"].items())
        self.metrics.write(record)
        if eval_loss is not None:   # the progress line keeps the latest evaluation
            self.last_eval = f"{eval_loss:.4f}"
        postfix = {"loss": f"{loss:.4f}"}
        if getattr(self, "last_eval", None):
            postfix["eval_loss"] = self.last_eval
        # the postfix first: update() draws the line, so this step's loss is the one shown
        self.progress.set_postfix(postfix, refresh=False)
        self.progress.update(1)
        every = self.config.train.log_every
        if eval_loss is not None:
            log.info("step %d eval_loss %.4f", step, eval_loss)
        if every and step % every == 0:
            log.info("step %d loss %.4f lr %.3g grad_norm %s %.3f s%s", step, loss, lr,
                     record["grad_norm"], elapsed, shares)

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


def skip_batches(step: int, last: int) -> int:
    """Log the batches after `step` through `last` that a guard decision skipped; returns last."""
    log.info("guard: batches of steps %d-%d skipped (RUN_DIR/%s)", step + 1, last,
             run_files.SKIPPED)
    return last


def train(config: RunConfig, run_dir: Path) -> int:
    """Run (or resume) training on this rank; returns the process exit code."""
    return Trainer(config, run_dir).run_training()


def _progress(start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)
