"""`llmlaunch plan`: resolve the inputs, search, print, emit. A thin layer over llmlaunch.topology
(the search), llmlaunch.report (what is printed and drawn) and llmlaunch.launcher.emit (--emit)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmlaunch.topology import planner
from llmlaunch.topology.cost import DEFAULT_PUE, cost_from_throughput
from llmlaunch.topology.engines import DEFAULT_ENGINE, ENGINES, engine_names
from llmlaunch.topology.flops import hardware_flops_per_token
from llmlaunch.topology.hardware import GpuSpec, gpu as catalog_gpu
from llmlaunch.topology.layout import CP_KINDS, RECOMPUTE_MODES, Layout
from llmlaunch.topology.approximations import planning_notes
from llmlaunch.topology.model_spec import ModelSpec
from llmlaunch.topology.params import total_params
from llmlaunch.topology.optimizer_states import OPTIMIZERS, optimizer_refusal
from llmlaunch.topology.plan_inputs import PlanInputs, cluster_for, resolve_precision
from llmlaunch.topology.shapes import preset, spec_from_params

from .common import DEFAULTS, add_cluster_arguments, add_model_arguments


def register(sub) -> None:
    p = sub.add_parser("plan", help="rank 3D-parallel layouts for N GPUs and a model",
                       description="Search dp x pp x tp layouts, estimate memory per pipeline stage and "
                                   "step time, rank by throughput; --emit writes the run's files.")
    add_plan_arguments(p)
    p.set_defaults(func=run_plan)


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--from-checkpoint", metavar="CKPT_DIR",
                   help="plan the rest of a run: the model and global batch of this checkpoint "
                        "directory (or tag); --emit writes a run that resumes from it on the "
                        "layout chosen, with the source run's train and data settings")
    add_cluster_arguments(p)
    p.add_argument("--network-from", metavar="RUN_DIR/preflight.json",
                   help="the intra- and inter-node bandwidth and latency a preflight measured "
                        "(llmlaunch preflight, the job's preflight) instead of the catalog's; "
                        "an override flag given too wins")
    g = p.add_argument_group("pins (fix a dimension; all pinned evaluates exactly that layout)")
    g.add_argument("--tp", type=int)
    g.add_argument("--pp", type=int)
    g.add_argument("--dp", type=int)
    g.add_argument("--micro-batch", type=int)
    g.add_argument("--zero", type=int, choices=(0, 1, 2, 3))
    g.add_argument("--ep", type=int, help="expert-parallel degree of a Mixture-of-Experts model "
                   "(divides dp and the experts; default: searched)")
    g.add_argument("--capacity-factor", type=float, default=1.0, metavar="C",
                   help="MoE: expert buffers (all-to-all, expert GEMMs) padded to C x the balanced "
                        "load (default 1.0)")
    g.add_argument("--memory-headroom", type=float, metavar="FRACTION",
                   default=planner.DEFAULT_MEMORY_HEADROOM,
                   help="fraction of each GPU's memory a layout must leave free, e.g. 0.1 "
                        f"(default {planner.DEFAULT_MEMORY_HEADROOM:g}: the estimate already "
                        "holds 5%% allocator fragmentation)")
    g.add_argument("--cp", type=int, metavar="N",
                   help="context-parallel degree: N ranks share each sequence (default: searched where "
                        "sequences are long)")
    g.add_argument("--cp-kind", choices=CP_KINDS,
                   help="context parallelism's form: allgather (K and V gathered, Llama 3) or "
                        "alltoall (heads split, DeepSpeed-Ulysses); default: the faster that fits")
    g.add_argument("--recompute", choices=RECOMPUTE_MODES)
    g.add_argument("--precision", choices=("bf16", "fp8", "fp32"),
                   help="default: bf16 on GPUs, fp32 on --gpu cpu; fp8: FP8 GEMMs in the linear "
                        "layers, bf16 elsewhere (estimate only: --emit refuses)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="the optimizer whose states are counted: adamw (two moments, default), "
                        "lion (one), adafactor (factored second moments; ZeRO-0 and fp32 only): "
                        "docs/optimizers.md")
    g.add_argument("--engine", choices=engine_names(), default=DEFAULT_ENGINE, metavar="NAME",
                   help="the training engine the step is priced for: "
                        + "; ".join(f"{name}{' (what llmlaunch runs, default)' if e.runnable else ''}"
                                    for name, e in ENGINES.items())
                        + " (docs/planner.md, 'Engines'); only deepspeed layouts are emitted")
    g.add_argument("--no-flash", action="store_true",
                   help="attention without a fused kernel (materialised s x s scores)")
    g.add_argument("--sequence-parallel", action="store_true",
                   help="pin Megatron-LM sequence parallelism on (default: searched with tp > 1, "
                        "the faster that fits)")
    g.add_argument("--virtual-stages", type=int, default=1, metavar="V",
                   help="estimate Megatron-LM's interleaved 1F1B with V chunks per pipeline rank "
                        "(estimate only: DeepSpeed runs plain 1F1B; --emit refuses)")
    h = p.add_argument_group("horizon")
    h.add_argument("--tokens", type=float, help="training tokens, e.g. 300e9: adds time, cost, energy")
    h.add_argument("--usd-per-gpu-hour", type=float, default=DEFAULTS["usd_per_gpu_hour"])
    h.add_argument("--pue", type=float, default=DEFAULT_PUE, help="datacenter PUE for energy")
    o = p.add_argument_group("output")
    o.add_argument("--top", type=int, default=10, help="candidates to show (default 10)")
    o.add_argument("--show-rejected", action="store_true", help="list ruled-out layouts and why")
    o.add_argument("--show-groups", action="store_true", help="list every TP/PP/DP group")
    o.add_argument("--json", action="store_true", help="one JSON object on stdout")
    o.add_argument("--report", metavar="FILE.html|FILE.png",
                   help="a self-contained page (rank map, 1F1B schedule, memory per stage, "
                        "candidates), or a PNG of the rank map and schedule")
    o.add_argument("--emit", metavar="DIR", help="write ds_config.json, run.yaml, train.sbatch")
    o.add_argument("--force", action="store_true", help="let --emit replace an existing DIR")
    o.add_argument("--data", metavar="SPEC",
                   help="--emit: the run's data, PATH or a blend W1:PATH1,W2:PATH2 (prepared "
                        "directories, Megatron PREFIX, datatrove output, .npy/.bin, parquet/arrow; "
                        "docs/data.md); without it the job trains on the toy corpus and refuses "
                        "more than one host")
    o.add_argument("--tokenizer", metavar="PATH",
                   help="--emit: the run's Hugging Face tokenizer directory or tokenizer.json")
    o.add_argument("--job-name", help="Slurm job name for --emit (default: the model name)")
    o.add_argument("--time", default="02:00:00", help="Slurm time limit for --emit (default "
                   "02:00:00; give your partition's limit: the job requeues itself at each)")
    o.add_argument("--fs-gb-per-s", type=float, metavar="GB/S",
                   help="--emit: file-system write bandwidth for the job, GB/s, for the save time "
                        "and the checkpoint interval (default: Llama 3's 2 TB/s for 16,384 GPUs, "
                        "scaled to --gpus)")
    o.add_argument("--mtbf-hours", type=float, metavar="H",
                   help="--emit: mean hours between failures of one GPU (default 50,677: Llama 3, "
                        "419 interruptions in 54 days on 16,384 H100)")
    env = o.add_mutually_exclusive_group()
    env.add_argument("--container", metavar="IMAGE",
                     help="--emit: the ranks run in this image (pyxis srun --container-image; "
                          "the run and data folders mounted)")
    env.add_argument("--env-setup", metavar="FILE",
                     help="--emit: a bash file sourced before the supervisor and every task "
                          "(module load, venv or conda activation)")
    o.add_argument("--min-nodes", type=int, metavar="K",
                   help="--emit an elastic job: #SBATCH --nodes=K-N, each start trains on the "
                        "hosts it got (dp from the ranks, the global batch kept; docs/launch.md)")


def resolve_model(args: argparse.Namespace) -> tuple[ModelSpec, int, str, list[str]]:
    """The ModelSpec, its parameter count, where the count came from, and defaulting notes."""
    notes = []
    for flag in ("seq_len", "vocab", "layers", "hidden", "heads", "kv_heads", "ffn_hidden"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    explicit = [args.layers, args.hidden, args.heads]
    chosen = [name for name, given in (("--params", args.params is not None), ("--model", args.model),
                                       ("--hf-config", args.hf_config),
                                       ("--from-checkpoint", getattr(args, "from_checkpoint", None)),
                                       ("--layers/--hidden/--heads", any(v is not None for v in explicit)))
              if given]
    if len(chosen) > 1:
        raise ValueError(f"give one model source, not {' and '.join(chosen)}")
    if getattr(args, "from_checkpoint", None):
        if args.seq_len is not None or args.vocab is not None or args.arch is not None:
            raise ValueError("--from-checkpoint sets the model; drop --seq-len, --vocab and --arch "
                             "(a checkpoint moves between layouts, not between model shapes)")
        spec = resume_source_of(args).spec
        return spec, total_params(spec), f"from checkpoint {args.from_checkpoint}", notes
    if args.hf_config:
        spec, params, source = spec_and_count_from_hf(args.hf_config, args.seq_len)
        return spec, params, source, notes
    if any(v is not None for v in explicit):
        if None in explicit:
            raise ValueError("--layers, --hidden and --heads go together (with optional --kv-heads, "
                             "--ffn-hidden, --vocab, --arch)")
        arch = args.arch or "gpt2"
        if args.arch is None:
            notes.append("arch gpt2 (default)")
        spec = ModelSpec(arch=arch, layers=args.layers, hidden=args.hidden, heads=args.heads,
                         kv_heads=args.kv_heads or 0, ffn_hidden=args.ffn_hidden or 0,
                         vocab=args.vocab or 50257, seq_len=args.seq_len or 2048, name="explicit shape")
        if args.vocab is None:
            notes.append("vocab 50257 (default, GPT-2's)")
        if args.seq_len is None:
            notes.append("seq_len 2048 (default)")
    elif args.params is not None:
        spec = spec_from_params(args.params, arch=args.arch or "gpt2", seq_len=args.seq_len,
                                vocab=args.vocab)
        notes.append(f"shape for --params {args.params:.3g}: {spec.name}")
    else:
        name = args.model or DEFAULTS["model"]
        if args.model is None:
            notes.append(f"model {name} (default)")
        spec = preset(name)
        changes = {k: v for k, v in (("seq_len", args.seq_len), ("vocab", args.vocab)) if v}
        if args.arch and args.arch != spec.arch:
            raise ValueError(f"--arch {args.arch} conflicts with --model {name} (arch {spec.arch})")
        spec = spec.replace(**changes) if changes else spec
    return spec, total_params(spec), "formula: topology/params.py", notes


def resume_source_of(args: argparse.Namespace):
    """The checkpoint --from-checkpoint names (read once per args), or None."""
    path = getattr(args, "from_checkpoint", None)
    if not path:
        return None
    if getattr(args, "_resume_source", None) is None:
        from llmlaunch.launcher.checkpoints.tools import resume_source

        args._resume_source = resume_source(path)
    return args._resume_source


def spec_and_count_from_hf(path: str, seq_len: int | None = None) -> tuple[ModelSpec, int, str]:
    """--hf-config: the planner's shape of a config.json as transformers reads it (its defaults
    filled in), the exact parameter count of the model transformers builds from it, and how that
    count was made: from the config's shapes in pure Python where the family has a shape reader
    (topology/hf_defaults.py; pinned equal to transformers' count on small configs of every such
    family), else by building the model on the meta device (model/hf_count.py)."""
    from llmlaunch.topology.hf_config import (fit_to_count, read_hf_config, shape_count_gap,
                                              spec_from_hf_config, spec_from_shapes)

    cfg = read_hf_config(path, label="--hf-config")
    gap = shape_count_gap(cfg)
    if gap is None:
        spec = spec_from_shapes(cfg, seq_len, source=path, label="--hf-config")
        return spec, total_params(spec), "exact, from the config's shapes"
    from llmlaunch.model.hf_count import count_hf_params, normalised_hf_config

    label = f"--hf-config {path!r}"
    exact = count_hf_params(cfg, label)         # transformers first: what it builds is planned
    spec = spec_from_hf_config(normalised_hf_config(cfg, label), seq_len, source=path,
                               label="--hf-config")
    return (fit_to_count(spec, exact), exact,
            f"exact, from transformers' model on the meta device: {gap}")


def resolve_gpu(args: argparse.Namespace, network=None) -> GpuSpec:
    """--gpu from the catalog (`cpu`: this host, measured), with the figures of `network` (a
    topology.measured_network.MeasuredNetwork, --network-from) and every override flag given (a
    flag wins)."""
    flags = dict(memory_gib=args.gpu_memory_gib, peak_tflops=args.peak_tflops,
                 matmul_efficiency=args.matmul_efficiency, hbm_gb_per_s=args.hbm_gb_per_s,
                 intra_node_gb_per_s=args.intra_node_gb_per_s,
                 inter_node_gb_per_s=args.inter_node_gb_per_s,
                 op_overhead_us=args.op_overhead_us,
                 collective_latency_us=args.collective_latency_us)
    given = {k: v for k, v in flags.items() if v is not None}
    measured = {}
    if network is not None:
        latency_us = given.get("collective_latency_us", catalog_gpu(args.gpu).collective_latency_us)
        measured = network.gpu_overrides(unmeasured_latency_us=latency_us)
    return catalog_gpu(args.gpu, measure=True, **{**measured, **given})


def resolve_inputs(args: argparse.Namespace) -> PlanInputs:
    """Everything `plan` was asked, resolved: the model, the cluster, the batch, the pins."""
    spec, params, source, notes = resolve_model(args)
    network = None
    if getattr(args, "network_from", None):
        from llmlaunch.topology.measured_network import read_network

        network = read_network(args.network_from)
        notes.append(network.note())
    gpu = resolve_gpu(args, network)
    if args.gpus is None or args.gpus < 1:
        raise ValueError(f"--gpus must be a positive integer, got {args.gpus}")
    if args.gpus_per_node is None or args.gpus_per_node < 1:
        raise ValueError(f"--gpus-per-node must be a positive integer, got {args.gpus_per_node}")
    cluster = cluster_for(args.gpus, args.gpus_per_node, gpu)
    resumed = resume_source_of(args)
    if resumed is not None:
        given = args.global_batch or (round(args.global_batch_tokens / spec.seq_len)
                                      if args.global_batch_tokens else None)
        if given is not None and given != resumed.global_batch:
            raise ValueError(f"--from-checkpoint: the checkpoint was trained with a global batch of "
                             f"{resumed.global_batch} sequences; a run resumes from it only at the "
                             f"same batch (drop --global-batch)")
        batch = resumed.global_batch
        notes.append(f"global batch {batch} sequences and the model from {resumed.ckpt_dir}/"
                     f"{resumed.tag} (step {resumed.step})")
    elif args.global_batch_tokens:
        batch = round(args.global_batch_tokens / spec.seq_len)
        if batch < 1:
            raise ValueError(f"--global-batch-tokens {args.global_batch_tokens:g} is less than one "
                             f"sequence of {spec.seq_len}")
        notes.append(f"global batch {batch} sequences = {args.global_batch_tokens:g} tokens / {spec.seq_len}")
    elif args.global_batch is not None:
        batch = args.global_batch
    else:
        batch = planner.default_global_batch(params, spec.seq_len, cluster.gpus, cluster.gpus_per_node)
        notes.append(f"global batch {batch} sequences ({batch * spec.seq_len / 1e6:.2f}M tokens; "
                     "default: GPT-3's batch for this size, at least gpus/gpus_per_node)")
    if batch < 1:
        raise ValueError(f"--global-batch must be a positive integer, got {batch}")
    precision = resolve_precision(args.precision or "auto", gpu.precision)
    if not args.capacity_factor >= 1:
        raise ValueError(f"--capacity-factor must be at least 1.0 (the balanced load), got "
                         f"{args.capacity_factor:g}")
    optimizer = getattr(args, "optimizer", "adamw")
    if not 0 <= args.memory_headroom < 1:
        raise ValueError(f"--memory-headroom is a fraction of GPU memory in [0, 1), e.g. 0.1; got "
                         f"{args.memory_headroom:g}")
    notes.append(f"memory headroom {args.memory_headroom:.0%}"
                 + (" (default; --memory-headroom FRACTION keeps some free)"
                    if args.memory_headroom == planner.DEFAULT_MEMORY_HEADROOM else ""))
    options = planner.PlanOptions(global_batch=batch, seq_len=spec.seq_len, precision=precision,
                                  flash_attention=not args.no_flash,
                                  capacity_factor=args.capacity_factor, engine=args.engine,
                                  memory_headroom=args.memory_headroom, optimizer=optimizer)
    zero = args.zero
    if optimizer == "adafactor":
        refusal = optimizer_refusal(optimizer, 0 if zero is None else zero, precision, spec)
        if refusal:
            raise ValueError(f"--optimizer {refusal.split(' ', 1)[1]} (--zero, --precision)")
        zero = 0
        notes.append("zero 0: Adafactor's factored moments need unflattened parameters")
    if optimizer != "adamw":
        notes.append(f"optimizer {optimizer}: its states counted as it allocates them "
                     "(docs/optimizers.md)")
    if precision == "fp8" and not gpu.fp8_peak_tflops:
        raise ValueError(f"--precision fp8: {gpu.name} has no FP8 tensor cores; use bf16, or a GPU "
                         "with FP8 (h100-80gb, h200-141gb, b200-180gb, gb200-186gb, mi300x-192gb)")
    if args.virtual_stages < 1:
        raise ValueError(f"--virtual-stages must be a positive integer, got {args.virtual_stages}")
    cp = args.cp
    pins = planner.Pins(dp=args.dp, pp=args.pp, tp=args.tp, micro_batch=args.micro_batch,
                        zero_stage=zero, recompute=args.recompute,
                        sequence_parallel=args.sequence_parallel, virtual_stages=args.virtual_stages,
                        ep=args.ep, cp=cp, cp_kind=args.cp_kind)
    check_pins(pins, cluster.gpus)
    check_expert_pin(pins, spec)
    for flag, default in (("gpus", DEFAULTS["gpus"]), ("gpu", DEFAULTS["gpu"])):
        if getattr(args, flag) == default:
            notes.append(f"{flag} {default} (default)")
    if args.gpus_per_node == DEFAULTS["gpus_per_node"]:
        notes.append(f"gpus per node {cluster.gpus_per_node} (default)")
    notes.append(f"precision {precision}, attention {'flash (fused SDPA)' if options.flash_attention else 'materialised'}")
    if args.engine != DEFAULT_ENGINE:
        notes.append(f"engine {args.engine} (an estimate: llmlaunch runs {DEFAULT_ENGINE})")
    return PlanInputs(spec=spec, cluster=cluster, options=options, pins=pins, params=params,
                      defaults=notes, params_source=source,
                      approximations=planning_notes(spec, params if args.hf_config else None))


def check_pins(pins: planner.Pins, gpus: int) -> None:
    """Pinned degrees must be positive and divide the GPU count (together, too)."""
    product = 1
    for name in ("dp", "pp", "tp", "cp", "micro_batch"):
        value = getattr(pins, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if value is not None and name != "micro_batch":
            if gpus % value:
                raise ValueError(f"--{name} {value} does not divide --gpus {gpus}")
            product *= value
    if gpus % product:
        pinned = " x ".join(f"{n}={getattr(pins, n)}" for n in ("dp", "pp", "tp", "cp")
                            if getattr(pins, n))
        raise ValueError(f"{pinned} = {product} does not divide --gpus {gpus}")
    if all(getattr(pins, n) for n in ("dp", "pp", "tp")) and product != gpus:
        lay = Layout(dp=pins.dp, pp=pins.pp, tp=pins.tp, cp=pins.cp or 1)
        raise ValueError(f"{lay.product} != --gpus {gpus}")


def check_expert_pin(pins: planner.Pins, spec: ModelSpec) -> None:
    """--ep: a positive divisor of the experts, of an MoE model, and of --dp when that is pinned."""
    if pins.ep is None:
        return
    if pins.ep < 1:
        raise ValueError(f"--ep must be a positive integer, got {pins.ep}")
    if pins.ep > 1 and not spec.moe:
        raise ValueError(f"--ep {pins.ep} needs a Mixture-of-Experts model; "
                         f"{spec.name or spec.arch} is dense (drop --ep)")
    if spec.moe and spec.experts % pins.ep:
        fits = ", ".join(str(d) for d in planner.divisors(spec.experts))
        raise ValueError(f"--ep {pins.ep} does not divide the model's {spec.experts} experts; "
                         f"--ep can be {fits}")
    if pins.dp and pins.dp % pins.ep:
        raise ValueError(f"--ep {pins.ep} does not divide --dp {pins.dp} (expert-parallel groups "
                         f"are sub-groups of a data-parallel group)")


def pinned_layout(inputs: PlanInputs) -> Layout | None:
    """The exact layout when every dimension is pinned (grad_accum follows from the batch)."""
    p = inputs.pins
    if None in (p.dp, p.pp, p.tp, p.micro_batch, p.zero_stage, p.recompute):
        return None
    per_replica, rest = divmod(inputs.options.global_batch, p.dp * p.micro_batch)
    if rest or per_replica < 1:
        raise ValueError(f"global batch {inputs.options.global_batch} is not a multiple of "
                         f"dp*micro_batch = {p.dp}*{p.micro_batch}; pass a --global-batch that is")
    return Layout(dp=p.dp, pp=p.pp, tp=p.tp, micro_batch=p.micro_batch, grad_accum=per_replica,
                  zero_stage=p.zero_stage, recompute=p.recompute,
                  sequence_parallel=p.sequence_parallel,
                  virtual_stages=p.virtual_stages if p.pp > 1 else 1, ep=p.ep or 1, cp=p.cp or 1,
                  cp_kind=p.cp_kind or "allgather")


def no_fit_message(inputs: PlanInputs, result: planner.SearchResult) -> str:
    """One line: why nothing fits and what would."""
    size = f"{inputs.params / 1e9:.1f}B"
    cl = inputs.cluster
    where = f"{size} does not fit on {cl.gpus} x {cl.gpu.name}"
    defaults = {"sequence_parallel": False, "virtual_stages": 1, "cp": 1}
    pinned = [f"{k}={v}" for k, v in vars(inputs.pins).items()
              if v is not None and defaults.get(k, None) != v]
    if pinned:
        nearest = min((c for c in result.rejected if c.stages), default=None,
                      key=lambda c: (len(c.reasons), c.worst_stage.total))
        reason = nearest.reasons[0] if nearest and nearest.reasons else (
            result.rejected[0].reasons[0] if result.rejected and result.rejected[0].reasons else "")
        if reason and "over memory" not in reason:   # ruled out, not too big: say so
            where = f"{size} has no layout on {cl.gpus} x {cl.gpu.name}"
        why = f": {reason}" if reason else ""
        return f"{where} with {', '.join(pinned)}{why}; drop a pin or use --show-rejected"
    needed = planner.minimum_gpus(inputs.spec, cl, inputs.options)
    if needed:
        return f"{where} under any layout; needs at least {needed} GPUs"
    return (f"{where} under any layout at any GPU count: with full recompute and micro-batch 1 a "
            f"stage still needs more than {cl.gpu.memory_gib:g} GiB for {inputs.spec.seq_len}-token "
            "sequences; shorten --seq-len or allow more tensor parallelism (--gpus-per-node)")


def plan(inputs: PlanInputs) -> tuple[planner.SearchResult, planner.Candidate | None]:
    """The search (or, with every dimension pinned, the one layout) and the layout to report: the
    best fitting one, or the pinned one when it can be estimated."""
    layout = pinned_layout(inputs)
    if layout is not None:
        cand = planner.evaluate(inputs.spec, inputs.cluster, layout, inputs.options)
        result = planner.SearchResult(candidates=[cand] if cand.fits else [],
                                      rejected=[] if cand.fits else [cand], evaluated=1)
        return result, cand if cand.estimated else None
    result = planner.search(inputs.spec, inputs.cluster, inputs.options, inputs.pins)
    return result, result.candidates[0] if result.candidates else None


def plan_from_argv(argv: list[str]) -> tuple[PlanInputs, planner.SearchResult,
                                              planner.Candidate | None]:
    """(inputs, result, chosen) as `llmlaunch plan ARGV` computes them (tests, benchmarks)."""
    parser = argparse.ArgumentParser(prog="llmlaunch plan")
    add_plan_arguments(parser)
    inputs = resolve_inputs(parser.parse_args(list(argv)))
    return (inputs, *plan(inputs))


def run_plan(args: argparse.Namespace) -> int:
    from llmlaunch.report import plan_json, text

    inputs = resolve_inputs(args)
    result, chosen = plan(inputs)
    horizon = None
    if args.tokens is not None:
        if not args.tokens > 0:
            raise ValueError(f"--tokens must be positive, got {args.tokens}")
        if chosen is not None:
            horizon = cost_from_throughput(
                tokens=args.tokens, tokens_per_s=chosen.tokens_per_s,
                flops_per_token=hardware_flops_per_token(inputs.spec, chosen.layout.recompute,
                                                         inputs.spec.seq_len),
                gpus=inputs.cluster.gpus, usd_per_gpu_hour=args.usd_per_gpu_hour,
                watts_per_gpu=inputs.cluster.gpu.tdp_watts, pue=args.pue)
    if args.json:
        print(json.dumps(plan_json.plan_json(inputs, result, chosen, horizon, args.tokens), indent=2))
    else:
        sys.stdout.write(text.plan_text(inputs, result, chosen, horizon, args))
    if args.report:
        from llmlaunch.report.plan_page import write_plan_report

        write_plan_report(args.report, inputs, result, chosen, horizon, args.tokens)
        print(f"wrote {args.report}", file=sys.stderr if args.json else sys.stdout)
    if chosen is None or not chosen.fits:
        print(f"llmlaunch: error: {no_fit_message(inputs, result)}", file=sys.stderr)
        return 1
    if args.emit:
        from llmlaunch.launcher.emit import checkpoint_plan_for, emit_plan

        if args.env_setup and not Path(args.env_setup).is_file():
            raise ValueError(f"--env-setup {args.env_setup!r} is not a file (give a bash file to "
                             "source: module load ..., source venv/bin/activate)")
        checkpoints = checkpoint_plan_for(inputs, chosen, args.fs_gb_per_s, args.mtbf_hours)
        written = emit_plan(args.emit, inputs, chosen, force=args.force, job_name=args.job_name,
                            time_limit=args.time, tokens=args.tokens,
                            resume_from=resume_source_of(args), min_nodes=args.min_nodes,
                            data=args.data, tokenizer=args.tokenizer, checkpoints=checkpoints,
                            container=args.container or "", env_setup=args.env_setup or "")
        out = sys.stderr if args.json else sys.stdout
        print("\n".join(checkpoints.reasoning()), file=out)
        print(f"wrote {', '.join(written)}", file=sys.stderr if args.json else sys.stdout)
    return 0
