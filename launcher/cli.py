"""The `llmlaunch` command. Each subcommand is a thin layer over importable functions; heavy
libraries (torch, deepspeed, transformers) are imported only by the subcommands that need them."""
from __future__ import annotations

import argparse
import json
import sys

from . import __version__


def _add_cost(sub) -> None:
    from .plan_cmd import DEFAULTS
    from .topology.cost import DEFAULT_PUE

    p = sub.add_parser("cost", help="FLOPs (6ND), GPU-days, wall time, cost and energy of a run",
                       description="C = 6 N D training FLOPs at a given model-FLOPs utilisation.")
    p.add_argument("--params", type=float, required=True, help="parameters N, e.g. 175e9")
    p.add_argument("--tokens", type=float, required=True, help="training tokens D, e.g. 300e9")
    p.add_argument("--gpu", default=DEFAULTS["gpu"], help=f"catalog GPU (default {DEFAULTS['gpu']})")
    p.add_argument("--gpus", type=int, default=DEFAULTS["gpus"], help=f"for wall time (default {DEFAULTS['gpus']})")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    p.add_argument("--peak-tflops", type=float, help="override the GPU's peak")
    p.add_argument("--usd-per-gpu-hour", type=float, default=DEFAULTS["usd_per_gpu_hour"])
    p.add_argument("--pue", type=float, default=DEFAULT_PUE)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_cost)


def _run_cost(args) -> int:
    from .topology.cost import cost_from_params
    from .topology.hardware import gpu

    for name in ("params", "tokens", "usd_per_gpu_hour", "pue"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.gpus < 1:
        raise ValueError(f"--gpus must be a positive integer, got {args.gpus}")
    device = gpu(args.gpu, peak_tflops=args.peak_tflops)
    result = cost_from_params(params=args.params, tokens=args.tokens, peak_tflops=device.peak_tflops,
                              mfu=args.mfu, gpus=args.gpus, usd_per_gpu_hour=args.usd_per_gpu_hour,
                              watts_per_gpu=device.tdp_watts, pue=args.pue)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"{args.params:.3g} parameters x {args.tokens:.3g} tokens x 6 = {result.flops:.3g} FLOPs")
    print(f"at MFU {args.mfu:.0%} of {device.peak_tflops:g} TFLOP/s ({device.name}): "
          f"{result.gpu_hours:,.0f} GPU-hours = {result.gpu_days:,.0f} GPU-days")
    print(f"on {args.gpus} GPUs: {result.wall_days:,.1f} days wall clock")
    print(f"cost ${result.cost_usd:,.0f} at ${args.usd_per_gpu_hour:g}/GPU-hour; energy "
          f"{result.energy_mwh:,.1f} MWh ({device.tdp_watts:g} W x PUE {args.pue:g}, an upper bound)")
    return 0


def _add_scale(sub) -> None:
    from .topology.scaling import DEFAULT_FIT, FITS

    p = sub.add_parser("scale", help="compute-optimal model size and tokens (Chinchilla), predicted loss",
                       description="Chinchilla scaling: give --compute, or fix --params or --tokens "
                                   "(with --compute, or both to just predict the loss).")
    p.add_argument("--compute", type=float, help="training FLOPs budget C, e.g. 5.76e23")
    p.add_argument("--params", type=float, help="fix N")
    p.add_argument("--tokens", type=float, help="fix D")
    p.add_argument("--fit", choices=sorted(FITS), default=DEFAULT_FIT,
                   help=f"parametric loss fit (default {DEFAULT_FIT})")
    p.add_argument("--inference-tokens", type=float,
                   help="tokens the model will serve: minimise training + inference FLOPs at the "
                        "loss of the compute-optimal model (or --target-loss)")
    p.add_argument("--target-loss", type=float, help="loss to reach in the inference-targeted mode")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_scale)


def _run_scale(args) -> int:
    from .topology import scaling

    fit = scaling.FITS[args.fit]
    for name in ("compute", "params", "tokens", "inference_tokens", "target_loss"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.params and args.tokens:
        if args.compute:
            raise ValueError("--params and --tokens fix the compute; drop --compute")
        base = scaling.point(fit, args.params, args.tokens)
    elif args.compute and args.params:
        base = scaling.point(fit, args.params, args.compute / (6 * args.params))
    elif args.compute and args.tokens:
        base = scaling.point(fit, args.compute / (6 * args.tokens), args.tokens)
    elif args.compute:
        base = scaling.optimal_point(fit, args.compute)
    elif args.inference_tokens and args.target_loss:
        base = None
    else:
        raise ValueError("give --compute C (optionally with --params or --tokens), or --params and "
                         "--tokens, or --inference-tokens with --target-loss")
    result = base
    if args.inference_tokens:
        target = args.target_loss or base.loss
        result = scaling.inference_optimal(fit, target, args.inference_tokens)
    elif args.target_loss:
        raise ValueError("--target-loss goes with --inference-tokens")
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    label = "inference-targeted" if args.inference_tokens else (
        "compute-optimal" if base is not None and not (args.params or args.tokens) else "fixed")
    if base is not None and args.inference_tokens:
        print(f"compute-optimal for {base.compute_flops:.3g} FLOPs: {base.params / 1e9:.1f}B parameters, "
              f"{base.tokens / 1e9:,.0f}B tokens, loss {base.loss:.3f}")
    print(f"{label} ({fit.name} fit): {result.params / 1e9:.2f}B parameters x {result.tokens / 1e9:,.0f}B "
          f"tokens ({result.tokens_per_param:.1f} tokens/parameter), {result.compute_flops:.3g} training "
          f"FLOPs, predicted loss {result.loss:.3f}")
    if args.inference_tokens:
        print(f"training + inference ({args.inference_tokens:.3g} tokens served): "
              f"{result.total_flops:.3g} FLOPs")
    return 0


def _add_plan(sub) -> None:
    from .plan_cmd import add_plan_arguments, run_plan

    p = sub.add_parser("plan", help="rank 3D-parallel layouts for N GPUs and a model",
                       description="Search dp x pp x tp layouts, estimate memory per pipeline stage and "
                                   "step time, rank by throughput; --emit writes the run's files.")
    add_plan_arguments(p)
    p.set_defaults(func=run_plan)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="prepare training data")
    data_sub = p.add_subparsers(dest="data_command", metavar="{prepare}", required=True)
    prep = data_sub.add_parser("prepare", help="raw text to deduplicated, filtered, tokenized shards")
    from .data.cli import add_prepare_arguments, run_prepare

    add_prepare_arguments(prep)
    prep.set_defaults(func=run_prepare)


def _add_train(sub) -> None:
    from .train_cmd import add_train_arguments, run_train

    p = sub.add_parser("train", help="train from run.yaml (local ranks, or one rank under srun)",
                       description="Run (or resume) training as run.yaml describes; see docs/launch.md.")
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def _add_preflight(sub) -> None:
    from .train_cmd import add_train_arguments, run_preflight

    p = sub.add_parser("preflight", help="check an allocation (devices, memory, disk, all-reduce)",
                       description="Start the ranks `train` would start and check them: devices and "
                                   "memory against the plan, free disk for checkpoints, a timed "
                                   "all-reduce over the real backend.")
    add_train_arguments(p)
    p.set_defaults(func=run_preflight)


def _add_report(sub) -> None:
    from .report_html import add_report_arguments, run_report

    p = sub.add_parser("report", help="the plan page for a trained run, with its measured curves",
                       description="Write RUN_DIR/report.html (or --out): the layout, schedule and "
                                   "memory of the run's plan, loss/lr/grad-norm/tokens-per-second "
                                   "curves from metrics.jsonl, and measured against predicted.")
    add_report_arguments(p)
    p.set_defaults(func=run_report)


def _add_validate(sub) -> None:
    from .validate import add_validate_arguments, run_validate

    p = sub.add_parser("validate", help="run a few real steps and compare memory and time with the plan",
                       description="Run a few training steps of this layout on this machine and print, "
                                   "per rank, each quantity predicted by the planner, measured, and the "
                                   "error (docs/validation.md).")
    add_validate_arguments(p)
    p.set_defaults(func=run_validate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmlaunch", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"llmlaunch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_plan, _add_cost, _add_scale, _add_train, _add_preflight, _add_validate,
                _add_report, _add_data):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, OSError) as exc:
        # ConfigError, DataError and every input check are ValueErrors with a one-line message
        print(f"llmlaunch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
