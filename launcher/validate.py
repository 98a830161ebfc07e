"""`llmlaunch validate`: the planner's memory and step-time predictions against real training steps.

`llmlaunch validate --config RUN.yaml [--nproc N] [--set k=v ...] [--steps K] [--json]` runs a few
training steps of the run's layout on this machine (CPU with gloo, GPU with NCCL). `run_validate`
starts the ranks the way `llmlaunch train` does (torch's elastic launcher locally, or this process as
one rank under srun), each running `python -m llmlaunch.validate --config RUN.yaml --run-dir DIR
[--set k=v ...]`. The two options that are not run.yaml values reach the ranks as environment
variables: LLMLAUNCH_VALIDATE_STEPS (steps to run, default 5) and LLMLAUNCH_VALIDATE_JSON ("1":
print one JSON object instead of the table).

Each rank builds the model/ pipeline module and `deepspeed.initialize`s it with the run's DeepSpeed
config, exactly as a training rank does, trains K steps on seeded random tokens (memory and time do
not depend on the token values), and measures (every storage counted once, by
`untyped_storage().data_ptr()`, with its full `nbytes()`; meta tensors count nothing):

- weights: the storages of this rank's module parameters (under ZeRO-1 that is DeepSpeed's flat
  parameter buffer, alignment padding included).
- gradients: the storages holding gradients - `param.grad` and `param.grad_accum` of the module's
  parameters, the fp32 views `param._hp_grad`; ZeRO's `averaged_gradients`, `all_grad_tensors` and
  the `.grad` of its fp32 partitions; BF16_Optimizer's `fp32_groups_gradients_flat` - taken at three
  points of the first step (the end of the last backward before the gradient reduction, right after
  it, and inside the optimizer update) and reported as the largest. Communication buckets (ZeRO's
  `ipg_buckets`) are not gradients: the planner counts them as buffers.
- optimizer: the basic optimizer's state tensors (Adam's exp_avg, exp_avg_sq, a tensor `step`) and
  the fp32 master weights a wrapper keeps (ZeRO's `single_partition_of_fp32_groups`,
  BF16_Optimizer's `fp32_groups_flat_partition`), after the last step.
- activations: the storages autograd saves for backward during one forward of this stage on one
  micro-batch (plus the loss on the last stage), recorded with
  `torch.autograd.graph.saved_tensors_hooks`; the parameters' storages are excluded. Compared with
  `topology.memory.saved_activation_bytes`: the planner's per-stage figure is that times the
  micro-batches in flight (1F1B: min(p - i, m) on stage i) plus `transient_activation_bytes` (the
  block being recomputed, the last stage's logits and their gradient), which exist only during a
  backward and are not measured.
- peak (GPU only): `torch.cuda.max_memory_allocated()` over the steps after the first, against the
  planner's allocated bytes of the stage (its total without the fragmentation allowance and the
  framework's memory outside the allocator). Not measured on CPU: the row is left out.
- step_time_s: the median wall time of `engine.train_batch` over the steps after the first, against
  the planner's step time for the run's `cluster.gpu` (rows left out when it is not in the catalog).
  Before training every rank probes its device (launcher/device_probe.py: GEMM rate at the model's
  shape, memory bandwidth, host time per op, all-reduce alpha and bandwidth), all ranks at once;
  the figures go into validate.json as `device_figures`. For `cluster.gpu: cpu`, whose catalog entry
  is this host, their medians replace the catalog's placeholders in the prediction (`predicted_for`
  is the device the step time was predicted for).

Rank 0 gathers every rank's measurements (`dist.gather_object`), pairs them with the planner's
predictions (`planner.evaluate` of the run's layout, the precision resolved as the trainer does:
fp32 on CPU), prints the table (or the JSON object) on stdout and writes RUN_DIR/validate.json
(`{"rows": [{rank, stage, quantity, predicted, measured, error_pct}, ...], ...}`, atomically). The
ranks' own output (DeepSpeed's messages) goes to stderr.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

from .atomic import write_text_atomic
from .config import RunConfig

ENV_STEPS = "LLMLAUNCH_VALIDATE_STEPS"
ENV_JSON = "LLMLAUNCH_VALIDATE_JSON"
DEFAULT_STEPS = 5
RESULT_FILE = "validate.json"
QUANTITIES = ("weights", "gradients", "optimizer", "activations", "peak", "step_time_s")


# ------------------------------------------------------------------------------------------------
# The command (`llmlaunch validate`)
# ------------------------------------------------------------------------------------------------

def add_validate_arguments(p) -> None:
    from .train_cmd import add_train_arguments

    add_train_arguments(p)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"training steps to run (at least 2: the first is not timed; default "
                        f"{DEFAULT_STEPS})")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (rows of rank, stage, quantity, predicted, measured, "
                        "error_pct) instead of the table")


def run_validate(args) -> int:
    """Start the ranks `llmlaunch train` would start, running `llmlaunch.validate` instead."""
    from .train_cmd import run_train

    if args.steps < 2:
        raise ValueError(f"--steps {args.steps}: at least 2 (the first step is not timed)")
    saved = {key: os.environ.get(key) for key in (ENV_STEPS, ENV_JSON)}
    os.environ[ENV_STEPS] = str(args.steps)
    os.environ[ENV_JSON] = "1" if args.json else "0"
    try:
        return run_train(args, module="llmlaunch.validate")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------------------------
# Measuring (one rank)
# ------------------------------------------------------------------------------------------------

class StorageCounter:
    """Bytes of distinct storages: each `untyped_storage()` counted once (by data pointer), at its
    full size; tensors on the meta device and empty storages count nothing."""

    def __init__(self, exclude=()):
        self.seen = set(exclude)
        self.bytes = 0

    def add(self, tensor) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.seen:
            return
        self.seen.add(ptr)
        self.bytes += storage.nbytes()

    def add_all(self, obj) -> None:
        """Every tensor in obj: a tensor, or lists / tuples / dicts of them (nested)."""
        import torch

        if isinstance(obj, torch.Tensor):
            self.add(obj)
        elif isinstance(obj, dict):
            for value in obj.values():
                self.add_all(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                self.add_all(value)
            flat = getattr(obj, "flat_partition", None)     # ZeRO's GradPartitionBufferGroup
            if flat is not None:
                self.add(flat)


def storage_ptrs(tensors) -> set:
    return {t.untyped_storage().data_ptr() for t in tensors}


def basic_optimizer(engine):
    """The torch optimizer doing the update (inside ZeRO's or the bf16 wrapper, or the engine's
    own)."""
    outer = engine.optimizer
    inner = getattr(outer, "optimizer", None)
    return inner if inner is not None and inner is not outer else outer


def weight_bytes(engine) -> int:
    counter = StorageCounter()
    for param in engine.module.parameters():
        counter.add(param)
        counter.add(getattr(param, "ds_tensor", None))      # a ZeRO-3 partition
    return counter.bytes


def gradient_bytes(engine) -> int:
    """Gradient storages alive now (see the module docstring)."""
    params = list(engine.module.parameters())
    counter = StorageCounter(exclude=storage_ptrs(params))
    for param in params:
        for attr in ("grad", "grad_accum", "_hp_grad"):
            counter.add(getattr(param, attr, None))
    outer = engine.optimizer
    for attr in ("averaged_gradients", "all_grad_tensors", "fp32_groups_gradients_flat"):
        counter.add_all(getattr(outer, attr, None))
    for master in getattr(outer, "single_partition_of_fp32_groups", None) or []:
        counter.add(master.grad)
    return counter.bytes


def optimizer_bytes(engine) -> int:
    """Optimizer state and fp32 master storages (see the module docstring)."""
    params = list(engine.module.parameters())
    counter = StorageCounter(exclude=storage_ptrs(params))
    for state in basic_optimizer(engine).state.values():
        counter.add_all(state)
    outer = engine.optimizer
    for attr in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        counter.add_all(getattr(outer, attr, None))
    return counter.bytes


class GradientProbe:
    """Records gradient_bytes at the end of the backward passes (before the pipeline's gradient
    reduction), after the reduction, and inside the optimizer update, during one step."""

    def __init__(self, engine):
        self.engine = engine
        self.readings = {}

    def __enter__(self):
        from deepspeed.runtime.pipe import schedule

        engine = self.engine
        original = type(engine)._INSTRUCTION_MAP
        reduce_grads = original[schedule.ReduceGrads]

        def probed_reduce(eng, *args, **kwargs):
            self.readings["before_reduction"] = gradient_bytes(eng)
            result = reduce_grads(eng, *args, **kwargs)
            self.readings["after_reduction"] = gradient_bytes(eng)
            return result

        # the pipeline engine looks instructions up in self._INSTRUCTION_MAP: an instance copy
        # overrides the class's table for this engine only
        engine._INSTRUCTION_MAP = {**original, schedule.ReduceGrads: probed_reduce}
        self.optimizer = basic_optimizer(engine)
        step = self.optimizer.step

        def probed_step(*args, **kwargs):
            self.readings["in_update"] = gradient_bytes(engine)
            return step(*args, **kwargs)

        self.optimizer.step = probed_step
        return self

    def __exit__(self, *exc):
        del self.engine._INSTRUCTION_MAP
        del self.optimizer.step
        return False

    @property
    def peak(self) -> int:
        return max(self.readings.values(), default=0)


def saved_activation_bytes_measured(engine, spec, micro_batch: int, dtype, generator) -> int:
    """Storages saved for backward by one forward of this stage on one micro-batch (and the loss on
    the last stage), parameters excluded. Every TP rank of a stage runs it together (the forward's
    all-reduces); stages do not communicate."""
    import torch

    module = engine.module
    device = engine.device
    shape = (micro_batch, spec.seq_len)
    if engine.is_first_stage():
        inputs = torch.randint(0, spec.vocab, shape, generator=generator).to(device)
    else:
        # what the engine hands a later stage: the received activation, requiring grad
        inputs = torch.randn(*shape, spec.hidden, generator=generator).to(device=device, dtype=dtype)
        inputs.requires_grad_(True)
    labels = torch.randint(0, spec.vocab, shape, generator=generator).to(device)
    counter = StorageCounter(exclude=storage_ptrs(module.parameters()))

    def pack(tensor):
        counter.add(tensor)
        return tensor

    module.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = module(inputs)
        if engine.is_last_stage():
            outputs = module.loss_fn(outputs, labels)
    del outputs
    return counter.bytes


def token_batches(spec, micro_batch: int, seed: int):
    """Endless (inputs, labels) micro-batches of seeded random tokens; the same sequence on every
    rank given the same seed (the TP ranks of a stage must read identical batches)."""
    import torch

    from .model import next_token_batch

    generator = torch.Generator().manual_seed(seed)
    while True:
        yield next_token_batch(torch.randint(0, spec.vocab, (micro_batch, spec.seq_len + 1),
                                             generator=generator))


def measure(config: RunConfig, steps: int) -> tuple[dict, dict]:
    """Train `steps` steps on this rank and measure it. Returns (this rank's record, run facts)."""
    from .rank import rank_environment

    env = rank_environment()
    os.environ.update(env)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    lay = config.layout
    if lay.dp * lay.pp * lay.tp != world:
        raise ValueError(f"layout dp*pp*tp = {lay.dp}*{lay.pp}*{lay.tp} = {lay.dp * lay.pp * lay.tp} "
                         f"but the job has {world} ranks")

    import deepspeed
    import torch

    from .build_locks import check_build_locks
    from .device_probe import probe_device
    from .ds_config import deepspeed_config, resolve_precision
    from .model import build_pipeline_model, init_distributed

    init_distributed(timeout_s=config.train.collective_timeout_s)
    on_gpu = torch.cuda.is_available()
    precision = resolve_precision(config, on_gpu)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    spec = config.model_spec()
    torch.manual_seed(config.train.seed)
    model = build_pipeline_model(spec, pp=lay.pp, tp=lay.tp, dp=lay.dp, recompute=lay.recompute,
                                 seed=config.train.seed, dtype=dtype,
                                 hf_dir=config.checkpoint.init_hf or None)
    check_build_locks()
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(config, precision))
    dp_rank = engine.grid.get_data_parallel_id()
    batches = token_batches(spec, lay.micro_batch, config.train.seed + dp_rank)
    device_figures = probe_device(tokens=lay.micro_batch * spec.seq_len, hidden=spec.hidden,
                                  mlp_cols=spec.ffn_hidden // lay.tp, dtype=dtype,
                                  device=torch.device(engine.device))

    def timed_step() -> float:
        started = time.perf_counter()
        engine.train_batch(data_iter=batches)
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    # step 1: untimed (warm-up, lazy optimizer state), with the gradient probes
    with GradientProbe(engine) as probe:
        timed_step()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    times = [timed_step() for _ in range(steps - 1)]
    peak = torch.cuda.max_memory_allocated() if on_gpu else None

    activations = saved_activation_bytes_measured(
        engine, spec, lay.micro_batch, dtype,
        torch.Generator().manual_seed(config.train.seed + 1000 + dp_rank))
    measured = {"weights": weight_bytes(engine), "gradients": probe.peak,
                "optimizer": optimizer_bytes(engine), "activations": activations,
                "step_time_s": statistics.median(times)}
    if peak is not None:
        measured["peak"] = peak
    record = {"rank": rank, "stage": engine.stage_id, "measured": measured,
              "params": sum(p.numel() for p in engine.module.parameters()),
              "gradient_readings": probe.readings, "device_figures": device_figures}
    facts = {"precision": precision, "world": world,
             "device": torch.cuda.get_device_name() if on_gpu else "cpu",
             "torch": torch.__version__, "deepspeed": deepspeed.__version__,
             # the wrapper decides which buffers exist (topology.memory.buffer_bytes)
             "optimizer_wrapper": type(engine.optimizer).__name__}
    return record, facts


def gather_records(record: dict) -> list[dict] | None:
    """Every rank's record on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    records = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(record, records, dst=0)
    return records


# ------------------------------------------------------------------------------------------------
# Predicting and reporting (rank 0)
# ------------------------------------------------------------------------------------------------

def prediction_device(config: RunConfig, figures_by_rank: list[dict]):
    """The device the step time is predicted for: run.yaml's cluster.gpu from the catalog, except
    `cpu`, whose catalog entry is defined as this host's measured figures: there the ranks' probes
    (launcher/device_probe.py) replace the catalog's placeholders. None when cluster.gpu is not in
    the catalog."""
    from .device_probe import device_from_figures
    from .rank import catalog_device

    device = catalog_device(config)
    if device is not None and device.name == "cpu" and figures_by_rank:
        device = device_from_figures(device, figures_by_rank)
    return device


def predictions(config: RunConfig, world: int, precision: str, device) -> dict:
    """{stage: {quantity: predicted}} from the planner for the run's layout; step_time_s only when
    `device` (see prediction_device) is known."""
    from .rank import predicted
    from .topology.hardware import gpu
    from .topology.memory import PRECISIONS, saved_activation_bytes

    estimate = predicted(config, world, precision, device if device is not None else gpu("cpu"))
    if not estimate.estimated:
        raise ValueError("the planner cannot estimate this layout: " + "; ".join(estimate.reasons))
    spec, lay = config.model_spec(), config.layout
    act = PRECISIONS[precision].activation_bytes
    norm_bytes = PRECISIONS[precision].norm_bytes
    out = {}
    for st in estimate.stages:
        per_micro_batch = saved_activation_bytes(
            spec, stage=st.stage, pp=lay.pp, blocks=st.blocks, micro_batch=lay.micro_batch, tp=lay.tp,
            recompute=lay.recompute, act_bytes=act, seq_len=config.model.seq_len,
            norm_bytes=norm_bytes)
        out[st.stage] = {"weights": st.weights, "gradients": st.gradients, "optimizer": st.optimizer,
                         "activations": per_micro_batch, "peak": st.allocated}
        if device is not None:
            out[st.stage]["step_time_s"] = estimate.step.total_s
    return out


def build_rows(records: list[dict], predicted_by_stage: dict) -> list[dict]:
    rows = []
    for record in sorted(records, key=lambda r: r["rank"]):
        stage = record["stage"]
        for quantity in QUANTITIES:
            measured = record["measured"].get(quantity)
            predicted = predicted_by_stage[stage].get(quantity)
            if measured is None or predicted is None:
                continue
            error = 100.0 * (measured - predicted) / predicted if predicted else None
            rows.append({"rank": record["rank"], "stage": stage, "quantity": quantity,
                         "predicted": predicted, "measured": measured, "error_pct": error})
    return rows


def _format_value(quantity: str, value: float) -> str:
    if quantity == "step_time_s":
        return f"{value:.4f} s"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.3f} {unit}"
    return f"{value:.0f} B"


def format_table(rows: list[dict]) -> str:
    from tabulate import tabulate

    table = [[r["rank"], r["stage"], r["quantity"], _format_value(r["quantity"], r["predicted"]),
              _format_value(r["quantity"], r["measured"]),
              "" if r["error_pct"] is None else f"{r['error_pct']:+.1f}%"] for r in rows]
    return tabulate(table, headers=["rank", "stage", "quantity", "predicted", "measured", "error"],
                    tablefmt="simple", colalign=("right", "right", "left", "right", "right", "right"))


def report(config: RunConfig, run_dir: Path, records: list[dict], facts: dict, steps: int) -> dict:
    lay = config.layout
    device = prediction_device(config, [r["device_figures"] for r in records])
    result = {
        "rows": build_rows(records, predictions(config, facts["world"], facts["precision"], device)),
        "layout": {"dp": lay.dp, "pp": lay.pp, "tp": lay.tp, "micro_batch": lay.micro_batch,
                   "grad_accum": lay.grad_accum, "zero_stage": lay.zero_stage,
                   "recompute": lay.recompute},
        "steps": steps, **facts,
        "gradient_readings": {str(r["rank"]): r["gradient_readings"] for r in records},
        "device_figures": {str(r["rank"]): r["device_figures"] for r in records},
        "predicted_for": None if device is None else dataclasses.asdict(device),
    }
    write_text_atomic(run_dir / RESULT_FILE, json.dumps(result, indent=1) + "\n")
    return result


def _redirect_stdout() -> int:
    """Point fd 1 (everything the rank prints, DeepSpeed and its C++ extensions included) at
    stderr; return a duplicate of the original stdout for _restore_stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    return saved


def _restore_stdout(saved: int) -> None:
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)


def main(argv: list[str] | None = None) -> int:
    from .rank import parse_rank_arguments

    steps = int(os.environ.get(ENV_STEPS, DEFAULT_STEPS))
    as_json = os.environ.get(ENV_JSON, "0") == "1"
    try:
        config, run_dir = parse_rank_arguments(argv, "llmlaunch.validate", __doc__.split("\n")[0])
    except ValueError as exc:
        print(f"llmlaunch: error: {exc}", file=sys.stderr)
        return 2
    saved_stdout = _redirect_stdout()
    try:
        if steps < 2:
            raise ValueError(f"{ENV_STEPS}={steps}: at least 2 steps (the first is not timed)")
        record, facts = measure(config, steps)
        records = gather_records(record)
        result = None
        if records is not None:
            result = report(config, run_dir, records, facts, steps)
        from .model.distributed import finish_distributed

        finish_distributed()
    except (ValueError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"llmlaunch: validate error on rank {os.environ.get('RANK', '?')}: {first_line}",
              file=sys.stderr)
        return 1
    finally:
        _restore_stdout(saved_stdout)
    if result is not None:
        if as_json:
            print(json.dumps(result), flush=True)
        else:
            lay = config.layout
            print(f"validate: dp {lay.dp} x pp {lay.pp} x tp {lay.tp}, micro-batch "
                  f"{lay.micro_batch} x {lay.grad_accum}, ZeRO-{lay.zero_stage}, recompute "
                  f"{lay.recompute}, {facts['precision']} on {facts['device']}, {steps} steps "
                  "(times: median after the first; activations: saved per micro-batch)")
            print(format_table(result["rows"]))
            print(f"written {run_dir / RESULT_FILE}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
