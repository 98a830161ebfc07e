"""`llmlaunch cost`: C = 6 N D training FLOPs, GPU-hours, wall time, cost and energy at a given MFU."""
from __future__ import annotations

import argparse
import json

from llmlaunch.topology.cost import DEFAULT_PUE, cost_from_params
from llmlaunch.topology.hardware import gpu

from .common import DEFAULTS


def register(sub) -> None:
    p = sub.add_parser("cost", help="FLOPs (6ND), GPU-days, wall time, cost and energy of a run",
                       description="C = 6 N D training FLOPs at a given model-FLOPs utilisation; "
                                   "for a Mixture-of-Experts model N is the active parameter count.")
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("--params", type=float, help="parameters N, e.g. 175e9")
    m.add_argument("--hf-config", help="a local Hugging Face config.json (or its directory): N "
                   "is transformers' exact count, N_active its active part for an MoE model")
    p.add_argument("--active-params", type=float,
                   help="with --params, for an MoE model: parameters per token N_active (C = 6 "
                        "N_active D), e.g. 12.9e9 for Mixtral-8x7B")
    p.add_argument("--tokens", type=float, required=True, help="training tokens D, e.g. 300e9")
    p.add_argument("--gpu", default=DEFAULTS["gpu"], help=f"catalog GPU (default {DEFAULTS['gpu']})")
    p.add_argument("--gpus", type=int, default=DEFAULTS["gpus"], help=f"for wall time (default {DEFAULTS['gpus']})")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    p.add_argument("--peak-tflops", type=float, help="override the GPU's peak")
    p.add_argument("--usd-per-gpu-hour", type=float, default=DEFAULTS["usd_per_gpu_hour"])
    p.add_argument("--pue", type=float, default=DEFAULT_PUE)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_cost)


def model_params(args: argparse.Namespace) -> tuple[float, float, str]:
    """(N, N_active, where they came from) from --params [--active-params] or --hf-config."""
    if args.hf_config:
        if args.active_params is not None:
            raise ValueError("--active-params goes with --params; --hf-config gives the active count")
        from llmlaunch.topology.params import active_params

        from .plan import spec_and_count_from_hf

        spec, params, source = spec_and_count_from_hf(args.hf_config)
        return params, active_params(spec, params), f"{spec.arch}, {source}"
    if not args.params > 0:
        raise ValueError(f"--params must be positive, got {args.params}")
    if args.active_params is None:
        return args.params, args.params, ""
    if not 0 < args.active_params <= args.params:
        raise ValueError(f"--active-params {args.active_params:.3g} must be positive and at most "
                         f"--params {args.params:.3g}")
    return args.params, args.active_params, ""


def run_cost(args: argparse.Namespace) -> int:

    for name in ("tokens", "usd_per_gpu_hour", "pue"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    params, active, source = model_params(args)
    if args.gpus < 1:
        raise ValueError(f"--gpus must be a positive integer, got {args.gpus}")
    device = gpu(args.gpu, measure=True, peak_tflops=args.peak_tflops)
    result = cost_from_params(params=params, tokens=args.tokens, peak_tflops=device.peak_tflops,
                              mfu=args.mfu, gpus=args.gpus, usd_per_gpu_hour=args.usd_per_gpu_hour,
                              watts_per_gpu=device.tdp_watts, pue=args.pue,
                              active_params=active if active != params else None)
    if args.json:
        print(json.dumps(dict(result.to_dict(), params=params, active_params=active)))
        return 0
    if source:
        print(f"model: {params:,.0f} parameters ({source})")
    if active != params:
        print(f"Mixture-of-Experts: {active / 1e9:.2f}B of {params / 1e9:.2f}B parameters active per token; "
              "C = 6 N_active D (each token goes through its k experts only)")
        print(f"{active:.3g} active parameters x {args.tokens:.3g} tokens x 6 = {result.flops:.3g} FLOPs")
    else:
        print(f"{params:.3g} parameters x {args.tokens:.3g} tokens x 6 = {result.flops:.3g} FLOPs")
    print(f"at MFU {args.mfu:.0%} of {device.peak_tflops:g} TFLOP/s ({device.name}): "
          f"{result.gpu_hours:,.0f} GPU-hours = {result.gpu_days:,.0f} GPU-days")
    print(f"on {args.gpus} GPUs: {result.wall_days:,.1f} days wall clock")
    print(f"cost ${result.cost_usd:,.0f} at ${args.usd_per_gpu_hour:g}/GPU-hour; energy "
          f"{result.energy_mwh:,.1f} MWh ({device.tdp_watts:g} W x PUE {args.pue:g}, an upper bound)")
    return 0
