"""`llmlaunch validate`: the planner's memory and step-time predictions against real training steps.

`llmlaunch validate --config RUN.yaml [--nproc N] [--set k=v ...] [--steps K] [--json]` runs a few
training steps of the run's layout on this machine (CPU with gloo, GPU with NCCL). The command
(llmlaunch/cli/validate.py) starts the ranks the way `llmlaunch train` does (torch's elastic launcher
locally, or this process as one rank under srun), each running `python -m llmlaunch.launcher.validate
--config RUN.yaml --run-dir DIR [--set k=v ...]`. The two options that are not run.yaml values reach the ranks as environment
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
- optimizer: the basic optimizer's state tensors (Adam's exp_avg, exp_avg_sq, a tensor `step`;
  Lion's exp_avg; Adafactor's factors, docs/optimizers.md: `train.optimizer` is counted too) and
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
  is the device the step time was predicted for; each GEMM of the block list is priced at its
  measured rate). `gemm_rates` pairs every GEMM of one block (forward, backward-data,
  backward-weight) with its measured rate and the shape model's for the catalog entry, and the
  matmul_efficiency the measurements fit (on a GPU, the catalog figure to replace).

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

from llmlaunch.atomic import write_text_atomic
from llmlaunch.config import RunConfig
from llmlaunch.run_files import VALIDATE

from .entry import exit_process, run_rank
from .memory_probe import (GradientProbe, optimizer_bytes,
                           saved_activation_bytes_measured, weight_bytes)

ENV_STEPS = "LLMLAUNCH_VALIDATE_STEPS"
ENV_JSON = "LLMLAUNCH_VALIDATE_JSON"
DEFAULT_STEPS = 5
RESULT_FILE = VALIDATE
MOE_QUANTITIES = ("expert_weights", "dispatch_buffer")     # an MoE model's rows only
QUANTITIES = ("weights", "gradients", "optimizer", "activations", "peak", "step_time_s",
              *MOE_QUANTITIES)


def token_batches(spec, micro_batch: int, seed: int, cp_rank: int = 0, cp: int = 1):
    """Endless (inputs, labels) micro-batches of seeded random tokens; the same sequence on every
    rank given the same seed (the TP ranks of a stage must read identical batches), this rank's
    chunks of them under context parallelism."""
    import torch

    from llmlaunch.model import next_token_batch
    from llmlaunch.model.batches import context_parallel_batch

    generator = torch.Generator().manual_seed(seed)
    while True:
        yield context_parallel_batch(next_token_batch(torch.randint(
            0, spec.vocab, (micro_batch, spec.seq_len + 1), generator=generator)), cp_rank, cp)


def measure(config: RunConfig, steps: int, ctx) -> tuple[dict, dict]:
    """Train `steps` steps on this rank (its context: model/rank_context.py) and measure it.
    Returns (this rank's record, run facts)."""
    rank, world = ctx.rank, ctx.world
    import deepspeed
    import torch

    from llmlaunch.topology.gemms import block_gemms

    from .device_probe import probe_device
    from .engine import build_engine

    run = build_engine(config, ctx)
    engine, spec, lay, dtype, precision = run.engine, run.spec, run.layout, run.dtype, run.precision
    on_gpu = torch.cuda.is_available()
    dp_rank = run.dp_rank
    batches = token_batches(spec, lay.micro_batch, config.train.seed + dp_rank, run.cp_rank, lay.cp)
    gemms = block_gemms(spec, micro_batch=lay.micro_batch, seq_len=spec.seq_len, tp=lay.tp,
                        recompute="none", cp=lay.cp, cp_kind=lay.cp_kind)
    device_figures = probe_device(tokens=lay.micro_batch * spec.seq_len // lay.cp, hidden=spec.hidden,
                                  mlp_cols=spec.ffn_hidden // lay.tp, dtype=dtype,
                                  device=torch.device(engine.device), gemms=gemms)

    def timed_step() -> float:
        started = time.perf_counter()
        run.train_step(batches)
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
        torch.Generator().manual_seed(config.train.seed + 1000 + dp_rank), layout=lay)
    measured = {"weights": weight_bytes(engine), "gradients": probe.peak,
                "optimizer": optimizer_bytes(engine), "activations": activations,
                "step_time_s": statistics.median(times)}
    if peak is not None:
        measured["peak"] = peak
    measured.update(moe_measurements(engine, spec, dtype))
    record = {"rank": rank, "stage": run.stage, "measured": measured,
              "params": sum(p.numel() for p in engine.module.parameters()),
              "gradient_readings": probe.readings, "device_figures": device_figures}
    facts = {"precision": precision, "world": world,
             "device": torch.cuda.get_device_name() if on_gpu else "cpu",
             "torch": torch.__version__, "deepspeed": deepspeed.__version__,
             # the wrapper decides which buffers exist (topology.memory.buffer_bytes)
             "optimizer_wrapper": type(engine.optimizer).__name__, "engine": run.kind}
    return record, facts


def moe_measurements(engine, spec, dtype) -> dict:
    """An MoE model's rows: expert_weights, the bytes of this rank's routed-expert parameters, and
    dispatch_buffer, the larger all-to-all buffer of its MoE layers in the activation forward (rows
    x h x bytes per element: T k copies sent, or what arrived for its experts, imbalance included).
    {} for a dense model or a stage without MoE layers."""
    import torch

    from llmlaunch.model.moe import MoELayer

    layers = [m for m in engine.module.modules() if isinstance(m, MoELayer)]
    if not layers:
        return {}
    experts = sum(p.numel() * p.element_size() for p in engine.module.parameters()
                  if getattr(p, "is_expert", False))
    element = torch.empty((), dtype=dtype).element_size()
    return {"expert_weights": experts,
            "dispatch_buffer": max(layer.dispatch_rows for layer in layers) * spec.hidden * element}


def moe_predictions(spec, lay, precision: str, first_block: int, blocks: int) -> dict:
    """The planner's figures for moe_measurements' rows on a stage of `blocks` blocks from
    `first_block`: topology/experts.py's expert_params_held (E/ep experts of each MoE block, TP
    slices) x weight bytes, and alltoall_buffer_bytes at the micro-batch's tokens (the capacity
    factor the run pads to; a dropless run is priced at the balanced load, 1.0)."""
    from llmlaunch.topology.experts import alltoall_buffer_bytes, expert_params_held
    from llmlaunch.topology.memory import PRECISIONS, dense_blocks_in

    moe_blocks = blocks - dense_blocks_in(spec, first_block, blocks)
    if not spec.moe or not moe_blocks:
        return {}
    bytes_of = PRECISIONS[precision]
    return {"expert_weights": expert_params_held(spec, moe_blocks, lay.tp, lay.ep)
            * bytes_of.weight_bytes,
            "dispatch_buffer": alltoall_buffer_bytes(spec, lay.micro_batch * spec.seq_len,
                                                     bytes_of.activation_bytes,
                                                     max(1.0, spec.capacity_factor))}


def gather_records(record: dict) -> list[dict] | None:
    """Every rank's record on rank 0 (None elsewhere)."""
    import torch.distributed as dist

    records = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(record, records, dst=0)
    return records


def prediction_device(config: RunConfig, figures_by_rank: list[dict]):
    """The device the step time is predicted for: run.yaml's cluster.gpu from the catalog, except an
    entry that is this host (`cpu`): there the ranks' probes (device_probe.py) replace the catalog's
    stand-ins. None when cluster.gpu is not in the catalog."""
    from llmlaunch.topology.hardware import gpu

    from .device_probe import device_from_figures

    try:
        device = gpu(config.cluster.gpu)
    except ValueError:
        return None
    if device.host_measured and figures_by_rank:
        device = device_from_figures(device, figures_by_rank)
    return device


def predictions(config: RunConfig, precision: str, device, layout) -> dict:
    """{stage: {quantity: predicted}} from the planner for the run's layout; step_time_s only when
    `device` (see prediction_device) is known."""
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.memory import PRECISIONS, saved_activation_bytes
    from llmlaunch.topology.plan_inputs import estimate_layout

    inputs = config.plan_inputs(precision, device=device if device is not None else gpu("cpu"),
                                layout=layout)
    estimate = estimate_layout(inputs, layout)
    spec, lay = config.model_spec(), config.layout
    act = PRECISIONS[precision].activation_bytes
    norm_bytes = PRECISIONS[precision].norm_bytes
    out, first_block = {}, 0
    for st in estimate.stages:
        per_micro_batch = saved_activation_bytes(
            spec, stage=st.stage, pp=lay.pp, blocks=st.blocks, micro_batch=lay.micro_batch, tp=lay.tp,
            recompute=lay.recompute, act_bytes=act, seq_len=config.model.seq_len,
            norm_bytes=norm_bytes, sequence_parallel=layout.sequence_parallel, cp=layout.cp)
        out[st.stage] = {"weights": st.weights, "gradients": st.gradients, "optimizer": st.optimizer,
                         "activations": per_micro_batch, "peak": st.allocated}
        if device is not None:
            out[st.stage]["step_time_s"] = estimate.step.total_s
        out[st.stage].update(moe_predictions(spec, lay, precision, first_block, st.blocks))
        first_block += st.blocks
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


def gemm_rates(config: RunConfig, precision: str, figures_by_rank: list[dict]) -> dict:
    """Per GEMM of one block (forward, backward-data, backward-weight): its shape, the median
    measured TFLOP/s over the ranks and what the shape model predicts for run.yaml's cluster.gpu
    from the catalog; and `fitted`, the catalog's matmul_efficiency that the measured rates imply
    (topology.gemm_model.fitted_matmul_efficiency). Empty when no rank timed the list."""
    from llmlaunch.topology.gemm_model import fitted_matmul_efficiency, gemm_time_s
    from llmlaunch.topology.gemms import block_gemms
    from llmlaunch.topology.hardware import gpu
    from llmlaunch.topology.memory import PRECISIONS

    from .device_probe import median_gemm_tflops

    measured = median_gemm_tflops(figures_by_rank)
    if not measured:
        return {}
    try:
        catalog = gpu(config.cluster.gpu)
    except ValueError:
        return {"measured_tflops": measured}
    spec, lay = config.model_spec(), config.layout
    act = PRECISIONS[precision].activation_bytes
    gemms = block_gemms(spec, micro_batch=lay.micro_batch, seq_len=spec.seq_len, tp=lay.tp,
                        recompute="none")
    rows = {f"{g.name}.{g.phase}": {"shape": g.shape, "measured_tflops": measured.get(g.shape),
                                     "model_tflops": g.flops / gemm_time_s(g, catalog, act) / 1e12}
            for g in gemms}
    return {"gemms": rows, "catalog": catalog.name,
            "fitted": {"matmul_efficiency": fitted_matmul_efficiency(measured, gemms, catalog, act)}}


def report(config: RunConfig, run_dir: Path, records: list[dict], facts: dict, steps: int,
           layout) -> dict:
    lay = config.layout
    device = prediction_device(config, [r["device_figures"] for r in records])
    result = {
        "rows": build_rows(records, predictions(config, facts["precision"], device, layout)),
        "layout": {"dp": lay.dp, "pp": lay.pp, "tp": lay.tp, "cp": lay.cp,
                   "cp_kind": lay.cp_kind, "sequence_parallel": lay.sequence_parallel,
                   "micro_batch": lay.micro_batch, "grad_accum": lay.grad_accum,
                   "zero_stage": lay.zero_stage, "offload": lay.offload,
                   "recompute": lay.recompute},
        "steps": steps, **facts,
        "gradient_readings": {str(r["rank"]): r["gradient_readings"] for r in records},
        "device_figures": {str(r["rank"]): r["device_figures"] for r in records},
        "predicted_for": None if device is None else dataclasses.asdict(device),
        "gemm_rates": gemm_rates(config, facts["precision"], [r["device_figures"] for r in records]),
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


def validate_rank(config: RunConfig, run_dir: Path) -> int:
    """Measure this rank; rank 0 prints the table (or JSON) and writes validate.json. Everything the
    rank prints while measuring (DeepSpeed's messages) goes to stderr."""
    steps = int(os.environ.get(ENV_STEPS, DEFAULT_STEPS))
    as_json = os.environ.get(ENV_JSON, "0") == "1"
    if steps < 2:
        raise ValueError(f"{ENV_STEPS}={steps}: at least 2 steps (the first is not timed)")
    from .engine import rank_context

    ctx = rank_context(config)
    saved_stdout = _redirect_stdout()
    try:
        record, facts = measure(config, steps, ctx)
        records = gather_records(record)
        result = (report(config, run_dir, records, facts, steps, ctx.layout)
                  if records is not None else None)
    finally:
        _restore_stdout(saved_stdout)
    if result is not None:
        if as_json:
            print(json.dumps(result), flush=True)
        else:
            lay = config.layout
            offload = "" if lay.offload == "none" else f", offload {lay.offload}"
            extra = (f" x cp {lay.cp} ({lay.cp_kind})" if lay.cp > 1 else "") + (
                ", sequence parallel" if lay.sequence_parallel else "")
            print(f"validate: dp {lay.dp} x pp {lay.pp} x tp {lay.tp}{extra}, micro-batch "
                  f"{lay.micro_batch} x {lay.grad_accum}, ZeRO-{lay.zero_stage}{offload}, recompute "
                  f"{lay.recompute}, {facts['precision']} on {facts['device']}, {steps} steps "
                  "(times: median after the first; activations: saved per micro-batch)")
            print(f"engine: DeepSpeed's {facts['engine']} engine, optimizer wrapper "
                  f"{facts['optimizer_wrapper']}")
            print(format_table(result["rows"]))
            print(f"written {run_dir / RESULT_FILE}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_rank(validate_rank, argv, "llmlaunch.launcher.validate", __doc__.split("\n")[0],
                    role="validate")


if __name__ == "__main__":
    exit_process(main())
