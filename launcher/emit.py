"""`plan --emit DIR`: ds_config.json, run.yaml and train.sbatch for the chosen layout.

Files are written into a temporary directory beside DIR and renamed into place, so DIR is either
complete or absent; an existing DIR is replaced only with --force.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path

from llmlaunch import __version__
from llmlaunch.atomic import atomic_directory
from llmlaunch.config import RunConfig, dump_run_config
from llmlaunch.run_files import DS_CONFIG, RUN_CONFIG, SBATCH
from llmlaunch.topology.engines import estimate_only_reason
from llmlaunch.topology.plan_inputs import PlanInputs
from llmlaunch.topology import resilience
from llmlaunch.topology.planner import Candidate
from llmlaunch.topology.resilience import CheckpointPlan

from .ds_config import deepspeed_config

# The body of every Slurm job: the supervisor (launcher/job.py), exec'd after the #SBATCH lines.
SUPERVISOR = "python3 -m llmlaunch.launcher.job"
# train.sbatch files written before the supervisor find their body through this name (package data
# of llmlaunch.launcher): a shim that execs the supervisor, so that they still start.
JOB_BODY = Path(__file__).parent / "jobs" / "slurm_job.sh"

SLURM_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")


def slurm_time_seconds(value: str) -> int:
    """Seconds of a Slurm time limit (sbatch(1): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S)."""
    days, _, rest = value.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        hms = parts + [0] * (3 - len(parts))
        return int(days) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
    if len(parts) == 3:
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    return parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)


def slurm_safe_name(name: str) -> str:
    """A job name for an #SBATCH line (which sbatch parses itself, not the shell): letters, digits,
    '.', '_' and '-' kept, anything else replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "llmlaunch"


def run_config_for(inputs: PlanInputs, candidate: Candidate, job_name: str, time_limit: str,
                   tokens: float | None = None, resume_from=None) -> RunConfig:
    """run.yaml for a planned layout: model and layout from the plan, train defaults otherwise.
    With `resume_from` (checkpoints/tools.py: ResumeSource) the source run's train, data and checkpoint
    settings are kept, paths made absolute, and checkpoint.dir is the source checkpoint
    directory: the run resumes from it (resharding on start) and goes on saving there."""
    spec, lay = inputs.spec, candidate.layout
    config = resumed_config(resume_from) if resume_from is not None else RunConfig()
    for key, value in spec.to_dict().items():
        setattr(config.model, key, value)
    for key, value in lay.to_dict().items():
        if hasattr(config.layout, key):     # every run.yaml layout key (virtual_stages is refused above)
            setattr(config.layout, key, value)
    config.cluster.gpu = inputs.cluster.gpu.name
    config.cluster.gpus_per_node = inputs.cluster.gpus_per_node
    config.train.precision = inputs.options.precision
    config.train.optimizer = inputs.options.optimizer
    if tokens and resume_from is None:
        config.train.steps = math.ceil(tokens / (lay.global_batch * spec.seq_len))
        config.train.warmup_steps = min(config.train.steps, max(1, config.train.steps // 100))
    config.slurm.job_name = job_name
    config.slurm.time = time_limit
    return config.validate()


def resumed_config(source) -> RunConfig:
    """The source run's config with its paths made absolute and checkpoint.dir = the source
    checkpoint directory (defaults where the source run directory holds no config)."""
    import copy

    config = copy.deepcopy(source.config) if source.config is not None else RunConfig()
    run_dir = source.ckpt_dir.parent
    if config.data.path and not Path(config.data.path).is_absolute():
        config.data.path = str((run_dir / config.data.path).resolve())
    for entry in config.data.sources + config.data.eval_sources:
        entry["path"] = str((run_dir / entry["path"]).resolve())
    if config.data.tokenizer:
        config.data.tokenizer = str((run_dir / config.data.tokenizer).resolve())
    if config.checkpoint.init_hf and not Path(config.checkpoint.init_hf).is_absolute():
        config.checkpoint.init_hf = str((run_dir / config.checkpoint.init_hf).resolve())
    config.model.hf_config = ""
    config.checkpoint.dir = str(source.ckpt_dir)
    config.checkpoint.reshard = "auto"
    return config


def sbatch_script(config: RunConfig, run_dir: str, nodes: int, tasks_per_node: int,
                  gpus_per_node: int, min_nodes: int | None = None,
                  reasoning: list[str] | None = None) -> str:
    """A job-specific sbatch file: its #SBATCH lines, then it execs the supervisor shipped with
    llmlaunch (one task per GPU, srun starts the ranks, USR1 before the time limit checkpoints and
    requeues). User input is sanitised on #SBATCH lines (sbatch parses them, not the
    shell) and shell-quoted elsewhere. `min_nodes` < nodes: an elastic job (`--nodes=K-N`, the
    layout derived at each start: launcher/elastic.py)."""
    s = config.slurm
    if not SLURM_TIME.match(s.time):
        raise ValueError(f"--time {s.time!r} is not a Slurm time limit (e.g. 02:00:00 or 1-12:00:00)")
    if slurm_time_seconds(s.time) <= s.signal_seconds:
        raise ValueError(f"--time {s.time} is not longer than the stop signal's {s.signal_seconds} s "
                         "before the limit (the time to save): give a longer --time")
    if min_nodes is not None and not 1 <= min_nodes <= nodes:
        raise ValueError(f"--min-nodes {min_nodes} must be between 1 and the plan's {nodes} node(s)")
    elastic = min_nodes is not None and min_nodes < nodes
    lines = [
        "#!/bin/bash",
        f"# Written by llmlaunch {__version__} plan --emit. Submit with: sbatch train.sbatch",
        f"#SBATCH --job-name={slurm_safe_name(s.job_name)}",
        f"#SBATCH --nodes={min_nodes}-{nodes}" if elastic else f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
    ]
    if gpus_per_node:   # whole GPU nodes: all their memory and CPUs (cpus per task: below)
        lines += [f"#SBATCH --gpus-per-node={gpus_per_node}", "#SBATCH --exclusive",
                  "#SBATCH --mem=0"]
    lines += [
        f"#SBATCH --time={s.time}",
        f"#SBATCH --signal=B:USR1@{int(s.signal_seconds)}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",   # a requeued start appends to the log, not replaces it
        "#SBATCH --output=slurm-%j.out",
    ]
    if s.partition:
        lines.append(f"#SBATCH --partition={slurm_safe_name(s.partition)}")
    if s.account:
        lines.append(f"#SBATCH --account={slurm_safe_name(s.account)}")
    lines += [f"# {line}" for line in reasoning or []]
    if gpus_per_node:
        lines += ["# the node's CPUs shared by its tasks (srun reads SRUN_CPUS_PER_TASK)",
                  'if (( ${SLURM_CPUS_ON_NODE:-0} >= ${SLURM_NTASKS_PER_NODE:-1} )); then',
                  '  export SRUN_CPUS_PER_TASK=$(( SLURM_CPUS_ON_NODE / SLURM_NTASKS_PER_NODE ))',
                  "fi"]
    if s.container_image:
        lines += [f"# the ranks run in {s.container_image} (run.yaml slurm.container_image: srun "
                  "--container-image, pyxis); the supervisor runs here"]
    lines += [
        f"RUN_DIR={shlex.quote(run_dir)}",
        *(["# elastic: each start derives dp and grad_accum from the nodes it got (global batch kept)",
           f"export LLMLAUNCH_ELASTIC={min_nodes}"] if elastic else []),
        "# llmlaunch's supervisor: data check, preflight, srun of the ranks, signals, requeue",
        "# (docs/launch.md). A stop signal before it holds them is ignored, not fatal.",
        "trap '' USR1 TERM",
        *(["# modules, venv or conda: sourced here (the supervisor) and by every task",
           f"ENV_SETUP={shlex.quote(s.env_setup)}",
           'source "$ENV_SETUP" || { echo "llmlaunch: error: --env-setup $ENV_SETUP failed '
           '(exit $?)" >&2; exit 1; }'] if s.env_setup else []),
        f'exec {SUPERVISOR} "$RUN_DIR/run.yaml" "$RUN_DIR"',
        "",
    ]
    return "\n".join(lines)


def container_mounts(config: RunConfig, run_dir: str) -> list[str]:
    """SRC:SRC mounts for the ranks' container: the run directory, the checkpoint directory, and
    the folders of the data, tokenizer, init_hf and env_setup paths (a file's or a Megatron
    prefix's parent folder)."""
    paths = [run_dir, str(Path(run_dir, config.checkpoint.dir))]
    for value in [config.data.path, config.data.tokenizer, config.checkpoint.init_hf,
                  config.slurm.env_setup] + [e["path"] for e in config.data.sources
                                             + config.data.eval_sources]:
        if value:
            path = Path(run_dir, value).resolve()
            paths.append(str(path if path.is_dir() else path.parent))
    kept = []
    for path in sorted(set(paths)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return [f"{path}:{path}" for path in kept]


def checkpoint_plan_for(inputs: PlanInputs, candidate: Candidate, fs_gb_per_s: float | None = None,
                        mtbf_hours: float | None = None) -> CheckpointPlan:
    """The checkpoint interval's inputs for this layout: the store's tag size (checkpoints/space.py),
    the planner's step time, the file system's bandwidth and the failure rate
    (topology/resilience.py; the defaults are Llama 3's, the flags override)."""
    from .checkpoints.space import tag_bytes

    gpus = inputs.cluster.gpus
    if fs_gb_per_s is not None and not fs_gb_per_s > 0:
        raise ValueError(f"--fs-gb-per-s must be positive (GB/s the job can write), got {fs_gb_per_s}")
    if mtbf_hours is not None and not mtbf_hours > 0:
        raise ValueError(f"--mtbf-hours must be positive (hours per GPU), got {mtbf_hours}")
    if fs_gb_per_s is None:
        fs, fs_source = resilience.default_fs_bytes_per_s(gpus), (
            f"Llama 3's 2 TB/s for 16,384 GPUs scaled to {gpus}; --fs-gb-per-s")
    else:
        fs, fs_source = fs_gb_per_s * 1e9, "--fs-gb-per-s"
    if mtbf_hours is None:
        mtbf, mtbf_source = resilience.gpu_mtbf_hours(), (
            "Llama 3: 419 interruptions in 54 days on 16,384 GPUs; --mtbf-hours")
    else:
        mtbf, mtbf_source = mtbf_hours, "--mtbf-hours"
    return CheckpointPlan(tag_bytes=tag_bytes(inputs.spec, candidate.layout.tp), gpus=gpus,
                          fs_bytes_per_s=fs, fs_source=fs_source, gpu_mtbf_h=mtbf,
                          mtbf_source=mtbf_source, step_s=candidate.step.total_s)


def cluster_is_cpu(inputs: PlanInputs) -> bool:
    """The planned accelerators are this kind of host (the catalog's `cpu`), not GPUs."""
    return inputs.cluster.gpu.host_measured


def emit_plan(out_dir: str, inputs: PlanInputs, candidate: Candidate, *, force: bool = False,
              job_name: str | None = None, time_limit: str = "02:00:00",
              tokens: float | None = None, resume_from=None,
              min_nodes: int | None = None, data: str | None = None,
              tokenizer: str | None = None, checkpoints: CheckpointPlan | None = None,
              container: str = "", env_setup: str = "") -> list[str]:
    """Write the three files for a fitting candidate; returns their paths. `resume_from`: a
    checkpoints/tools.py ResumeSource the run resumes from (plan --from-checkpoint). `min_nodes`: an
    elastic job on min_nodes..nodes hosts (plan --min-nodes). `checkpoints`: the interval and
    stop signal (checkpoint_plan_for), written with their reasoning. `container`: an image the
    ranks run in (pyxis); `env_setup`: a bash file sourced before every step."""
    lay = candidate.layout
    engine_reason = estimate_only_reason(inputs.options.engine)
    if engine_reason:
        raise ValueError(f"--emit: {engine_reason}; drop --engine to plan a layout it runs")
    if inputs.options.precision == "fp8":
        raise ValueError("--emit: --precision fp8 is an estimate: llmlaunch's model trains in bf16 "
                         "or fp32 (no FP8 GEMMs yet); drop --precision fp8 to emit")
    if inputs.spec.moe and not inputs.spec.runnable:
        raise ValueError(f"--emit: {inputs.spec.arch}'s experts are an estimate (llmlaunch's model "
                         "runs the MoE families mixtral, qwen2_moe and qwen3_moe)")
    if inputs.spec.moe and (lay.cp > 1 or lay.sequence_parallel):
        raise ValueError("--emit: an MoE model with context or sequence parallelism is an estimate "
                         "(llmlaunch's model runs experts at cp = 1 without sequence parallelism); "
                         "pin --cp 1 and drop --sequence-parallel to emit")
    if lay.virtual_stages > 1:
        raise ValueError("--emit: interleaved pipelines are estimates only (DeepSpeed's pipeline "
                         "engine runs plain 1F1B); drop --virtual-stages to emit")
    if not lay.runnable:
        raise ValueError(f"--emit: {lay.not_runnable_reason()}")
    name = job_name or (inputs.spec.name or "llmlaunch")
    config = run_config_for(inputs, candidate, name, time_limit, tokens, resume_from)
    if data:   # plan --emit --data SPEC (launcher/run_data.py: parse_data_spec)
        from .run_data import parse_data_spec

        config.data.path, config.data.sources = "", parse_data_spec(data)
    if tokenizer:
        config.data.tokenizer = str(Path(tokenizer).resolve())
    if checkpoints is not None:
        config.checkpoint.every = checkpoints.every_steps
        config.slurm.signal_seconds = checkpoints.signal_s
    run_dir = str(Path(out_dir).resolve())
    if env_setup:
        config.slurm.env_setup = str(Path(env_setup).resolve())
    if container:
        config.slurm.container_image = container
        config.slurm.container_mounts = container_mounts(config, run_dir)
    ds = deepspeed_config(config, inputs.options.precision, on_gpu=not cluster_is_cpu(inputs))
    cluster = inputs.cluster
    on_gpu = not cluster_is_cpu(inputs)
    tasks_per_node = min(cluster.gpus, cluster.gpus_per_node)
    reasoning = checkpoints.reasoning() if checkpoints is not None else []
    with atomic_directory(out_dir, force=force) as tmp:
        (tmp / DS_CONFIG).write_text(json.dumps(ds, indent=2) + "\n")
        header = "\n".join([f"# llmlaunch run config ({inputs.spec.name or inputs.spec.arch}, "
                            f"dp={lay.dp} pp={lay.pp} tp={lay.tp}"
                            f"{f' ep={lay.ep}' if lay.ep > 1 else ''}). Schema: docs/run-yaml.md",
                            *(f"# {line}" for line in reasoning)])
        (tmp / RUN_CONFIG).write_text(dump_run_config(config, header))
        script = sbatch_script(config, run_dir, cluster.nodes, tasks_per_node,
                               tasks_per_node if on_gpu else 0, min_nodes, reasoning)
        (tmp / SBATCH).write_text(script)
        os.chmod(tmp / SBATCH, 0o755)
    return [str(Path(out_dir) / n) for n in (DS_CONFIG, RUN_CONFIG, SBATCH)]
