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


def ensure_data(config: RunConfig, run_dir: Path, rank: int) -> Path:
    """data.path, or the shipped corpus prepared once into RUN_DIR/data (by global rank 0, before
    the process group forms: the others wait for it at the rendezvous)."""
    if config.data.path:
        path = Path(config.data.path)
        return path if path.is_absolute() else (run_dir / path)
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
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
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


def _tensorboard_writer(log_dir: Path):
    """A SummaryWriter when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def setup_logging(run_dir: Path, rank: int) -> None:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(run_dir / "logs" / f"rank{rank:05d}.log")]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format=f"%(asctime)s rank{rank} %(message)s", datefmt="%H:%M:%S")


def train(config: RunConfig, run_dir: Path) -> int:
    """Run (or resume) training; returns the process exit code."""
    env = rank_environment()
    os.environ.update(env)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    setup_logging(run_dir, rank)
    stop = StopRequest()
    stop.install()
    lay = config.layout
    if lay.dp * lay.pp * lay.tp != world:
        raise ValueError(f"layout dp*pp*tp = {lay.dp}*{lay.pp}*{lay.tp} = {lay.dp * lay.pp * lay.tp} "
                         f"but the job has {world} ranks")
    if rank == 0:
        (run_dir / STOPPED_FILE).unlink(missing_ok=True)
        _write_text_atomic(run_dir / EFFECTIVE_CONFIG,
                           dump_run_config(config, "# the config this run used (run.yaml + --set)"))
    data_path = ensure_data(config, run_dir, rank)

    import deepspeed
    import torch
    import torch.distributed as dist

    from .data.loader import TokenWindowLoader
    from .model import build_pipeline_model, init_distributed, next_token_batch
    from .topology.flops import hardware_flops_per_token, model_flops_per_token

    init_distributed(timeout_s=config.train.collective_timeout_s)
    on_gpu = torch.cuda.is_available()
    precision = resolve_precision(config, on_gpu)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    spec = config.model_spec()
    torch.manual_seed(config.train.seed)
    model = build_pipeline_model(spec, pp=lay.pp, tp=lay.tp, dp=lay.dp, recompute=lay.recompute,
                                 seed=config.train.seed, dtype=dtype,
                                 hf_dir=config.checkpoint.init_hf or None)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(config, precision))

    ckpt_dir = Path(config.checkpoint.dir)
    ckpt_dir = ckpt_dir if ckpt_dir.is_absolute() else run_dir / ckpt_dir
    start_step = 0
    found = latest_good(ckpt_dir)
    if found is not None:
        tag, record = found
        check_layout(record, {"dp": lay.dp, "pp": lay.pp, "tp": lay.tp})
        engine.load_checkpoint(str(ckpt_dir), tag=tag)
        start_step = record["step"]
        log.info("resumed from %s (step %d)", ckpt_dir / tag, start_step)

    global_batch = lay.micro_batch * lay.grad_accum * lay.dp
    loader = TokenWindowLoader(data_path, spec.seq_len, lay.micro_batch, dp_size=lay.dp,
                               dp_rank=engine.grid.get_data_parallel_id(), seed=config.train.seed,
                               consumed_samples=start_step * global_batch)
    batches = (next_token_batch(torch.from_numpy(tokens)) for tokens in loader)

    device = catalog_device(config) if rank == 0 else None
    estimate = predicted(config, world, precision, device) if device is not None else None
    if estimate is not None and estimate.estimated:
        log.info("planner predicts %.3f s per step, %.2f GiB on the worst stage (%s)",
                 estimate.step.total_s, estimate.worst_stage.total / 2**30, config.cluster.gpu)
    metrics = MetricsLog(run_dir / "metrics.jsonl", start_step) if rank == 0 else None
    tokens_per_step = global_batch * spec.seq_len
    hw_flops = hardware_flops_per_token(spec, lay.recompute) * tokens_per_step
    model_flops = model_flops_per_token(spec) * tokens_per_step
    peak = device.peak_tflops * 1e12 if device is not None else None
    progress = _progress(rank, start_step, config.train.steps)

    def save(step: int) -> None:
        tag = tag_for_step(step)
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step},
                               save_latest=False)
        dist.barrier()
        if rank == 0:
            mark_complete(ckpt_dir, tag, {"tag": tag, "step": step, "layout": config.layout.__dict__,
                                          "consumed_samples": step * global_batch})
            prune(ckpt_dir, config.checkpoint.keep)
        dist.barrier()
        log.info("checkpoint %s saved", ckpt_dir / tag)

    step_times, step = [], start_step
    stop_flag = torch.zeros(1, device=engine.device)
    last_saved = start_step
    try:
        while step < config.train.steps:
            stop_flag.fill_(1.0 if stop.requested else 0.0)
            dist.all_reduce(stop_flag, op=dist.ReduceOp.MAX)
            if stop_flag.item() > 0:
                if step > last_saved:
                    save(step)
                log.info("stop requested (%s): stopped after step %d with a checkpoint; run again "
                         "to resume", stop.signal_name or "another rank", step)
                if rank == 0:
                    (run_dir / STOPPED_FILE).write_text(json.dumps(
                        {"step": step, "signal": stop.signal_name or "another rank"}) + "\n")
                return 0
            lr = engine.optimizer.param_groups[0]["lr"]  # the rate this step applies
            started = time.perf_counter()
            loss = float(engine.train_batch(data_iter=batches))
            elapsed = time.perf_counter() - started
            step += 1
            step_times.append(elapsed)
            grad_norm = engine.get_global_grad_norm()
            if metrics is not None:
                record = {"step": step, "loss": loss, "lr": lr,
                          "grad_norm": float(grad_norm) if grad_norm is not None else None,
                          "tokens_per_s": tokens_per_step / elapsed,
                          "tflops_per_gpu": hw_flops / elapsed / world / 1e12,
                          "mfu": model_flops / elapsed / world / peak if peak else None,
                          "step_time_s": elapsed, "memory_gib": measured_memory_gib(torch)}
                metrics.write(record)
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if config.train.log_every and step % config.train.log_every == 0:
                    log.info("step %d loss %.4f lr %.3g grad_norm %s %.3f s", step, loss, lr,
                             record["grad_norm"], elapsed)
            if config.checkpoint.every and step % config.checkpoint.every == 0:
                save(step)
                last_saved = step
        if step > last_saved:
            save(step)
    finally:
        progress.close()
        if metrics is not None:
            metrics.close()
    if rank == 0 and estimate is not None and estimate.estimated and len(step_times) > 1:
        measured_s = statistics.median(step_times[1:])
        mem = measured_memory_gib(torch)
        log.info("measured %.3f s per step (median after the first) vs predicted %.3f s (%+.0f%%); "
                 "memory %.2f GiB vs predicted %.2f GiB for the worst stage", measured_s,
                 estimate.step.total_s, 100 * (measured_s / estimate.step.total_s - 1), mem,
                 estimate.worst_stage.total / 2**30)
    return 0


def _progress(rank: int, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=rank != 0, unit="step", file=sys.stderr,
                dynamic_ncols=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmlaunch.rank", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--run-dir", help="default: the folder of --config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.set)
    except ValueError as exc:
        print(f"llmlaunch: error: {exc}", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or Path(args.config).resolve().parent).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        code = train(config, run_dir)
        from .model.distributed import finish_distributed

        finish_distributed()
        return code
    except (ValueError, RuntimeError) as exc:
        # one line on stderr; the traceback goes to the rank's log file
        log.exception("training failed")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"llmlaunch: error on rank {os.environ.get('RANK', '?')}: {first_line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
