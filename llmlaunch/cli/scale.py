"""`llmlaunch scale`: Chinchilla compute-optimal model size and tokens, predicted loss, and
inference-targeted sizing."""
from __future__ import annotations

import argparse
import json

from llmlaunch.topology import scaling
from llmlaunch.topology.scaling import DEFAULT_FIT, FITS


def register(sub) -> None:
    p = sub.add_parser("scale", help="compute-optimal model size and tokens (Chinchilla), predicted loss",
                       description="Chinchilla scaling: give --compute, or fix --params or --tokens "
                                   "(with --compute, or both to just predict the loss).")
    p.add_argument("--compute", type=float, help="training FLOPs budget C, e.g. 5.76e23")
    p.add_argument("--params", type=float, help="fix N")
    p.add_argument("--tokens", type=float, help="fix D")
    p.add_argument("--active-params", type=float,
                   help="Mixture-of-Experts: parameters per token N_active (with --params and one of "
                        "--tokens, --compute): C = 6 N_active D, no loss predicted (the fits are "
                        "of dense models)")
    p.add_argument("--fit", choices=sorted(FITS), default=DEFAULT_FIT,
                   help=f"parametric loss fit (default {DEFAULT_FIT})")
    p.add_argument("--inference-tokens", type=float,
                   help="tokens the model will serve: minimise training + inference FLOPs at the "
                        "loss of the compute-optimal model (or --target-loss)")
    p.add_argument("--target-loss", type=float, help="loss to reach in the inference-targeted mode")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_scale)


def run_scale(args: argparse.Namespace) -> int:
    fit = scaling.FITS[args.fit]
    for name in ("compute", "params", "tokens", "inference_tokens", "target_loss", "active_params"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.active_params is not None:
        return run_moe(args)
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


def run_moe(args: argparse.Namespace) -> int:
    """--active-params: an MoE model's compute C = 6 N_active D, given N and one of D or C."""
    if not args.params or bool(args.tokens) == bool(args.compute) or args.inference_tokens \
            or args.target_loss:
        raise ValueError("--active-params goes with --params and exactly one of --tokens or "
                         "--compute (compute-optimal sizing and inference targets use the dense "
                         "fits, which do not describe an MoE model)")
    tokens = args.tokens or args.compute / (6 * args.active_params)
    result = scaling.moe_point(args.params, args.active_params, tokens)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"Mixture-of-Experts: {result.params / 1e9:.2f}B parameters, {result.active_params / 1e9:.2f}B "
          f"active per token x {result.tokens / 1e9:,.0f}B tokens = {result.compute_flops:.3g} training "
          "FLOPs (C = 6 N_active D)")
    print("no loss prediction: the Chinchilla fits are of dense models, and an MoE's loss is that of "
          "neither a dense model of its total nor of its active size")
    return 0
