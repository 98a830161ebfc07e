"""`llmlaunch cost`: training FLOPs, GPU-hours, wall time, cost and energy at a given MFU.

The FLOPs are the model's (topology/flops.py: run_model_flops, attention included), the same
numerator as the MFU that `plan`, the trainer and the pages print, whenever the shape is known
(--model, --hf-config, or --params through the shape `plan --params` derives); C = 6 N D is
printed beside them. Only --params with --active-params (an MoE model with no shape) prices 6 N D.
"""
from __future__ import annotations

import argparse
import json

from llmlaunch.topology.cost import DEFAULT_PUE, cost_from_model, cost_from_params
from llmlaunch.topology.flops import training_flops
from llmlaunch.topology.hardware import gpu

from .common import DEFAULTS


def register(sub) -> None:
    p = sub.add_parser("cost", help="FLOPs, GPU-days, wall time, cost and energy of a run",
                       description="The model's training FLOPs (attention included: the MFU "
                                   "numerator of plan and the trainer; 6 N D beside them) at a "
                                   "given model-FLOPs utilisation.")
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("--params", type=float, help="parameters N, e.g. 175e9 (the shape plan "
                   "--params derives; --arch picks its family)")
    m.add_argument("--model", help="a preset, e.g. llama3-8b (llmlaunch plan --help lists them)")
    m.add_argument("--hf-config", help="a local Hugging Face config.json (or its directory): N "
                   "is transformers' exact count, N_active its active part for an MoE model")
    p.add_argument("--arch", help="with --params: the family whose shape is derived (default gpt2)")
    p.add_argument("--seq-len", type=int, help="sequence length s (default: the model's)")
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


def model_params(args: argparse.Namespace):
    """(spec or None, N, N_active, where they came from) from --params [--active-params],
    --model or --hf-config."""
    from llmlaunch.topology.params import active_params, total_params

    if args.seq_len is not None and args.seq_len < 1:
        raise ValueError(f"--seq-len must be a positive integer, got {args.seq_len}")
    if args.hf_config or args.model:
        if args.active_params is not None:
            raise ValueError("--active-params goes with --params; --hf-config and --model give "
                             "the active count")
        if args.arch:
            raise ValueError("--arch goes with --params (--model and --hf-config have their own)")
    if args.hf_config:
        from .plan import spec_and_count_from_hf

        spec, params, how = spec_and_count_from_hf(args.hf_config, args.seq_len)
        return spec, params, active_params(spec, params), f"{spec.arch}, {how}"
    if args.model:
        from llmlaunch.topology.shapes import preset

        spec = preset(args.model)
        spec = spec.replace(seq_len=args.seq_len) if args.seq_len else spec
        params = total_params(spec)
        return spec, params, active_params(spec, params), f"{args.model}, formula: topology/params.py"
    if not args.params > 0:
        raise ValueError(f"--params must be positive, got {args.params}")
    if args.active_params is None:
        from llmlaunch.topology.shapes import spec_from_params

        spec = spec_from_params(args.params, arch=args.arch or "gpt2", seq_len=args.seq_len)
        return spec, args.params, args.params, f"shape for --params {args.params:.3g}: {spec.name}"
    if not 0 < args.active_params <= args.params:
        raise ValueError(f"--active-params {args.active_params:.3g} must be positive and at most "
                         f"--params {args.params:.3g}")
    return None, args.params, args.active_params, ""


def run_cost(args: argparse.Namespace) -> int:
    for name in ("tokens", "usd_per_gpu_hour", "pue"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    spec, params, active, source = model_params(args)
    if args.gpus < 1:
        raise ValueError(f"--gpus must be a positive integer, got {args.gpus}")
    device = gpu(args.gpu, measure=True, peak_tflops=args.peak_tflops)
    money = dict(peak_tflops=device.peak_tflops, mfu=args.mfu, gpus=args.gpus,
                 usd_per_gpu_hour=args.usd_per_gpu_hour, watts_per_gpu=device.tdp_watts, pue=args.pue)
    flops_6nd = training_flops(active, args.tokens)
    if spec is not None:
        result = cost_from_model(spec=spec, tokens=args.tokens, **money)
    else:
        result = cost_from_params(params=params, tokens=args.tokens, active_params=active, **money)
    if args.json:
        print(json.dumps(dict(result.to_dict(), params=params, active_params=active,
                              flops_6nd=flops_6nd,
                              flops_definition="model" if spec is not None else "6ND")))
        return 0
    if source:
        print(f"model: {params:,.0f} parameters ({source})")
    if active != params:
        print(f"Mixture-of-Experts: {active / 1e9:.2f}B of {params / 1e9:.2f}B parameters active per "
              "token; C = 6 N_active D (each token goes through its k experts only)")
    if spec is not None:
        print(f"model FLOPs {result.flops:.3g} = {result.flops / args.tokens:.4g} per token x "
              f"{args.tokens:.3g} tokens (topology/flops.py: every matmul and the attention core, "
              f"s = {spec.seq_len}, forward + backward; the MFU numerator of plan and the trainer)")
        print(f"  beside it 6 N D = 6 x {active:.3g} x {args.tokens:.3g} = {flops_6nd:.3g} FLOPs "
              f"({result.flops / flops_6nd - 1:+.1%}: 6 N D leaves out attention over s and counts "
              "the embedding table)")
    else:
        print(f"{active:.3g} {'active ' if active != params else ''}parameters x {args.tokens:.3g} "
              f"tokens x 6 = {result.flops:.3g} FLOPs (6 N D: no shape given; --model or "
              "--hf-config count the model's FLOPs as plan's MFU does)")
    print(f"at MFU {args.mfu:.1%} of {device.peak_tflops:g} TFLOP/s ({device.name}): "
          f"{result.gpu_hours:,.0f} GPU-hours = {result.gpu_days:,.0f} GPU-days")
    print(f"on {args.gpus} GPUs: {result.wall_days:,.1f} days wall clock")
    print(f"cost ${result.cost_usd:,.0f} at ${args.usd_per_gpu_hour:g}/GPU-hour; energy "
          f"{result.energy_mwh:,.1f} MWh ({device.tdp_watts:g} W x PUE {args.pue:g}, an upper bound)")
    return 0
