"""run.yaml: the one input of a training run (schema in docs/run-yaml.md).

Sections are dataclasses with a docstring per field; YAML exists only at the edge (`load_run_config`,
`dump_run_config`). Every value is type-checked and an unknown key is an error that names it.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmlaunch import run_files
from llmlaunch.topology.layout import Layout
from llmlaunch.topology.model_spec import MODEL_KEYS, ModelSpec, untrainable_reasons


class ConfigError(ValueError):
    """A run.yaml or --set value that does not fit the schema."""


@dataclass
class ModelSection:
    """The transformer's shape (see llmlaunch.topology.model_spec.ModelSpec), written out or read
    from a Hugging Face config.json (hf_config)."""

    arch: str = "gpt2"
    """gpt2, llama, mistral, qwen2 or qwen3 (the families llmlaunch's model runs)."""
    layers: int = 4
    """Transformer blocks."""
    hidden: int = 128
    """Model width."""
    heads: int = 4
    """Attention heads."""
    kv_heads: int = 0
    """Key/value heads (0: same as heads)."""
    ffn_hidden: int = 0
    """MLP width (0: the architecture's default)."""
    vocab: int = 4096
    """Vocabulary size before padding."""
    seq_len: int = 128
    """Training sequence length."""
    rope_theta: float = 10000.0
    """RoPE base (llama)."""
    norm_eps: float = 1e-5
    """LayerNorm / RMSNorm epsilon."""
    head_dim: int = 0
    """Width of one attention head (0: hidden/heads); Qwen3 sets it."""
    tied_embeddings: typing.Optional[bool] = None
    """The LM head reuses the token table (null: the family's default, tied for gpt2 only)."""
    sliding_window: int = 0
    """mistral, qwen2, qwen3: each query attends to the last N keys, on every layer (0: all)."""
    hf_config: str = ""
    """A Hugging Face config.json (or the directory holding one) that sets every key above except
    seq_len (the training length, still this section's); keys given as well must agree with it."""


@dataclass
class LayoutSection:
    """How the world splits (see llmlaunch.topology.layout.Layout)."""

    dp: int = 1
    """Data-parallel degree."""
    pp: int = 1
    """Pipeline stages."""
    tp: int = 1
    """Tensor-parallel degree."""
    micro_batch: int = 1
    """Sequences per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step per replica (pipeline micro-batches)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3: with pp = 1 DeepSpeed's plain engine runs any (3 shards the
    weights too); with a pipeline (pp > 1) its PipelineEngine runs 0 and 1. bf16 needs >= 1."""
    recompute: str = "none"
    """Activation recomputation: none, selective, full."""
    offload: str = "none"
    """ZeRO-Offload to CPU memory (pp = 1): none, optimizer (ZeRO >= 1), optimizer+params (ZeRO-3)."""


@dataclass
class TrainSection:
    """Optimisation: AdamW, linear warmup then cosine decay to min_lr."""

    steps: int = 100
    """Optimizer steps."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Floor of the cosine decay."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0: off)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    seed: int = 1234
    """Seed of initialisation and data order."""
    precision: str = "auto"
    """bf16, fp32, or auto (bf16 on GPU, fp32 on CPU)."""
    log_every: int = 1
    """Steps between log lines (metrics.jsonl gets every step)."""
    collective_timeout_s: int = 300
    """Seconds a collective may wait before the job fails (a stalled rank ends the job)."""


@dataclass
class DataSection:
    """Training data."""

    path: str = ""
    """A directory written by `llmlaunch data prepare`, or a flat token file; empty: the corpus
    shipped with llmlaunch."""
    dtype: str = ""
    """Token dtype of a flat .bin file: uint16 or uint32 (empty: uint16; a prepared directory and a
    .npy file say their own)."""


@dataclass
class CheckpointSection:
    """DeepSpeed checkpoints."""

    dir: str = run_files.CHECKPOINTS
    """Checkpoint directory (relative paths are under the run directory)."""
    every: int = 50
    """Save every N optimizer steps (0: only at the end and on preemption)."""
    keep: int = 3
    """Keep the last K checkpoints."""
    init_hf: str = ""
    """A local Hugging Face model directory of the same architecture to start from (empty: seeded
    initialisation). Ignored when resuming from a checkpoint."""
    reshard: str = "auto"
    """auto: a checkpoint written under another layout (dp, pp, tp, ZeRO stage, offload, engine)
    is moved to this run's on start, through its layout-free state; never: refuse it."""


@dataclass
class ClusterSection:
    """Where the run goes (for the planner's prediction and the Slurm job)."""

    gpu: str = "cpu"
    """Catalog name (llmlaunch.topology data/gpus.yaml)."""
    gpus_per_node: int = 8
    """Accelerators per node (ranks per node on CPU)."""


@dataclass
class SlurmSection:
    """The sbatch job that `plan --emit` writes."""

    job_name: str = "llmlaunch"
    """Slurm job name."""
    time: str = "02:00:00"
    """Time limit (HH:MM:SS or D-HH:MM:SS)."""
    partition: str = ""
    """Partition (empty: the cluster default)."""
    account: str = ""
    """Account (empty: the user default)."""
    signal_seconds: int = 300
    """Seconds before the time limit that Slurm sends USR1 to checkpoint and requeue."""


@dataclass
class RunConfig:
    """All of run.yaml."""

    model: ModelSection = field(default_factory=ModelSection)
    layout: LayoutSection = field(default_factory=LayoutSection)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    slurm: SlurmSection = field(default_factory=SlurmSection)

    def model_spec(self) -> ModelSpec:
        return ModelSpec(**{k: getattr(self.model, k) for k in MODEL_KEYS})

    def _resolve_hf_config(self) -> None:
        """Fill the model section from model.hf_config; ConfigError when the config cannot be
        read, names a family or feature the model does not train, or disagrees with a key given."""
        from llmlaunch.topology.hf_config import (read_hf_config, spec_from_hf_config,
                                                  training_differences)

        label = "model.hf_config"
        path = self.model.hf_config
        try:
            cfg = read_hf_config(path, label=label)
            spec = spec_from_hf_config(cfg, self.model.seq_len, source=path, label=label)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        problems = untrainable_reasons(spec) + training_differences(cfg, spec)
        if problems:
            raise ConfigError(f"{label} {path!r} (model_type {cfg.get('model_type')!r}): "
                              f"{'; '.join(problems)}: llmlaunch's model does not train that")
        resolved = spec.to_dict()
        given = getattr(self.model, "_given", set())
        clashes = [f"model.{k} {getattr(self.model, k)!r} (the config has {resolved[k]!r})"
                   for k in sorted(given) if k in resolved and k != "seq_len"
                   and getattr(self.model, k) != resolved[k]]
        if clashes:
            raise ConfigError(f"{', '.join(clashes)} disagrees with model.hf_config "
                              f"{path!r}; drop the key (the config sets it)")
        for key, value in resolved.items():
            setattr(self.model, key, value)

    def layout_obj(self) -> Layout:
        return Layout(**dataclasses.asdict(self.layout))

    def plan_inputs(self, precision: str | None = None, device=None, measure: bool = True):
        """The planner's inputs for this run at its layout (topology.plan_inputs.layout_inputs, the
        one adapter): on `device` (a GpuSpec), by default cluster.gpu from the catalog (this host
        measured for `cpu` unless measure=False); at the precision given (a rank's resolved one) or
        train.precision. ConfigError when cluster.gpu is not in the catalog."""
        from llmlaunch.topology.hardware import gpu
        from llmlaunch.topology.plan_inputs import layout_inputs

        if device is None:
            try:
                device = gpu(self.cluster.gpu, measure=measure)
            except ValueError as exc:
                raise ConfigError(f"run.yaml cluster.gpu: {exc}") from None
        return layout_inputs(self.model_spec(), self.layout_obj(), gpu=device,
                             gpus_per_node=self.cluster.gpus_per_node,
                             precision=precision or self.train.precision)

    def validate(self) -> "RunConfig":
        """Cross-field checks; raises ConfigError naming the offending keys."""
        if self.model.hf_config:
            self._resolve_hf_config()
        try:
            spec = self.model_spec()
            layout = self.layout_obj()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        untrainable = untrainable_reasons(spec)
        if untrainable:
            raise ConfigError(f"model: {'; '.join(untrainable)}")
        reasons = layout.model_reasons(spec)
        if reasons:
            raise ConfigError(f"the layout does not fit the model: {'; '.join(reasons)} "
                              "(layout.tp, layout.pp against the model section)")
        if not layout.runnable:
            raise ConfigError(f"layout: {layout.not_runnable_reason()}")
        if self.train.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"train.precision must be auto, bf16 or fp32, got "
                              f"{self.train.precision!r}")
        for key in ("steps",):
            if getattr(self.train, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1")
        if self.train.collective_timeout_s < 1:
            raise ConfigError("train.collective_timeout_s must be >= 1")
        for key in ("warmup_steps", "log_every"):
            if getattr(self.train, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0")
        if self.data.dtype not in ("", "uint16", "uint32"):
            raise ConfigError(f"data.dtype must be uint16 or uint32 (or empty), got "
                              f"{self.data.dtype!r}")
        if not 0 <= self.train.min_lr <= self.train.lr:
            raise ConfigError("need 0 <= train.min_lr <= train.lr")
        if self.checkpoint.reshard not in ("auto", "never"):
            raise ConfigError(f"checkpoint.reshard must be auto or never, got "
                              f"{self.checkpoint.reshard!r}")
        if self.checkpoint.every < 0 or self.checkpoint.keep < 1:
            raise ConfigError("checkpoint.every must be >= 0 and checkpoint.keep >= 1")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def _coerce(where: str, value, kind):
    """Check (and for numbers written as strings, convert) one value against its field type
    (Optional[T]: None, or a T)."""
    if typing.get_origin(kind) is typing.Union:
        if value is None:
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "3e-4" (no dot) as a string
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")


def from_dict(raw: dict, source: str = "run.yaml") -> RunConfig:
    """Build and validate a RunConfig from plain data (sections may be partial); errors name
    `source` (the file the data came from)."""
    try:
        return _from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _from_dict(raw: dict) -> RunConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of sections")
    config = RunConfig()
    for section_name, values in raw.items():
        if section_name not in _SECTIONS:
            raise ConfigError(f"unknown section {section_name!r} "
                              f"(known: {', '.join(_SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"section {section_name!r} must be a mapping")
        for key, value in values.items():
            set_value(config, f"{section_name}.{key}", value)
    return config.validate()


def set_value(config: RunConfig, dotted: str, value) -> None:
    """Assign section.key = value with the schema's checks."""
    section_name, _, key = dotted.partition(".")
    if section_name not in _SECTIONS or not key:
        raise ConfigError(f"unknown key {dotted!r} (sections: {', '.join(_SECTIONS)})")
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if key not in hints:
        raise ConfigError(f"unknown key {dotted!r} (known in {section_name}: "
                          f"{', '.join(hints)})")
    setattr(section, key, _coerce(dotted, value, hints[key]))
    if section_name == "model":   # keys given (not defaulted): checked against model.hf_config
        section.__dict__.setdefault("_given", set()).add(key)


def apply_overrides(config: RunConfig, overrides: list[str], source: str = "run.yaml") -> RunConfig:
    """Apply `--set section.key=value` strings (values parsed as YAML scalars); errors name the
    --set item, or `source` with the overrides when they only clash together."""
    for item in overrides or []:
        dotted, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.steps=20")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        try:
            set_value(config, dotted.strip(), value)
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
    try:
        return config.validate()
    except ConfigError as exc:
        given = " with --set " + " ".join(overrides) if overrides else ""
        raise ConfigError(f"{source}{given}: {exc}") from None


BUILTIN_CONFIGS = Path(__file__).parent / "configs"
# What a training run actually used (run.yaml plus --set overrides), written into its run directory.
EFFECTIVE_CONFIG = run_files.EFFECTIVE_CONFIG


def load_run_dir_config(run_dir: str | os.PathLike) -> RunConfig:
    """The config a run directory was trained with: run.effective.yaml, else run.yaml."""
    run_dir = Path(run_dir)
    for name in (EFFECTIVE_CONFIG, run_files.RUN_CONFIG):
        if (run_dir / name).is_file():
            return load_run_config(run_dir / name)
    raise ConfigError(f"{str(run_dir)!r} has no run.yaml (nor the {EFFECTIVE_CONFIG} a training run "
                      "writes)")


def builtin_config_names() -> list[str]:
    """The configs shipped with llmlaunch, by the name --config takes."""
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml"))


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A run.yaml path, or the name of a config shipped with llmlaunch (e.g. `tiny-cpu`)."""
    path = Path(name)
    if not path.exists() and (BUILTIN_CONFIGS / f"{name}.yaml").is_file():
        return BUILTIN_CONFIGS / f"{name}.yaml"
    return path


def load_run_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read run.yaml (or a built-in config by name) safely, check it, apply --set overrides."""
    given = str(path)
    path = resolve_config_path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        hint = ""
        if not path.exists() and path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
            hint = f"; built-in configs: {', '.join(builtin_config_names())}"
        raise ConfigError(f"cannot read run config {given!r}: {exc.strerror}{hint}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: YAML tags are not allowed{where}: run.yaml holds plain "
                          "values only") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return apply_overrides(from_dict(raw, source=str(path)), overrides or [], source=str(path))


def dump_run_config(config: RunConfig, header: str = "") -> str:
    """run.yaml text: sections in schema order, a comment header."""
    body = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    return (header + "\n" if header else "") + body
