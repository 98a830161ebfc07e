"""run.yaml: the one input of a training run (schema in docs/run-yaml.md).

Sections are dataclasses with a docstring per field; YAML exists only at the edge (`load_run_config`,
`dump_run_config`). Every value is type-checked and an unknown key is an error that names it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llmlaunch import run_files
from llmlaunch.config_checks import check_run_config
from llmlaunch.config_sections import (CheckpointSection, ClusterSection, ConfigError, DataSection,
                                       LayoutSection, ModelSection, SlurmSection, TrainSection,
                                       SOURCE_KEYS)
from llmlaunch.topology.layout import Layout
from llmlaunch.topology.model_spec import (MODEL_KEYS, MOE_KEYS, ROUTER_TRAINING_KEYS, ModelSpec,
                                           untrainable_reasons)


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
        return ModelSpec(**{k: getattr(self.model, k) for k in MODEL_KEYS + MOE_KEYS})

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
        given = getattr(self.model, "_given", set())
        # seq_len and the router's training settings stay run.yaml's when it gives them
        resolved = {k: v for k, v in spec.to_dict().items()
                    if k not in given or k not in ("seq_len", *ROUTER_TRAINING_KEYS)}
        clashes = [f"model.{k} {getattr(self.model, k)!r} (the config has {resolved[k]!r})"
                   for k in sorted(given) if k in resolved and getattr(self.model, k) != resolved[k]]
        if clashes:
            raise ConfigError(f"{', '.join(clashes)} disagrees with model.hf_config "
                              f"{path!r}; drop the key (the config sets it)")
        for key, value in resolved.items():
            setattr(self.model, key, value)

    def layout_obj(self) -> Layout:
        return Layout(**dataclasses.asdict(self.layout))

    def plan_inputs(self, precision: str | None = None, device=None, measure: bool = True,
                    layout: Layout | None = None):
        """The planner's inputs for this run at its layout (topology.plan_inputs.layout_inputs, the
        one adapter): on `device` (a GpuSpec), by default cluster.gpu from the catalog (this host
        measured for `cpu` unless measure=False); at the precision given (a rank's resolved one) or
        train.precision; at `layout` (a rank's, from its context) or run.yaml's. ConfigError when
        cluster.gpu is not in the catalog."""
        from llmlaunch.topology.hardware import gpu
        from llmlaunch.topology.plan_inputs import layout_inputs

        if device is None:
            try:
                device = gpu(self.cluster.gpu, measure=measure)
            except ValueError as exc:
                raise ConfigError(f"run.yaml cluster.gpu: {exc}") from None
        return layout_inputs(self.model_spec(), layout or self.layout_obj(), gpu=device,
                             gpus_per_node=self.cluster.gpus_per_node,
                             precision=precision or self.train.precision,
                             optimizer=self.train.optimizer)

    def validate(self) -> "RunConfig":
        """Cross-field checks (config_checks.py); raises ConfigError naming the offending keys."""
        if self.model.hf_config:
            self._resolve_hf_config()
        try:
            spec = self.model_spec()
            layout = self.layout_obj()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        check_run_config(self, spec, layout)
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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:  # YAML 1.1 reads "3e-4" (no dot) as a string
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{where} must be a finite number, got {number}")
            return number
    elif kind is list:
        return _source_list(where, value) if where.endswith("sources") else _string_list(where, value)
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where} must be {kind.__name__}, got {reprlib.repr(value)}")


def _string_list(where: str, value) -> list:
    """A list of strings (train.monitors, slurm.container_mounts); a single string is one item."""
    if value in (None, ""):
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    return list(items)


def _source_list(where: str, value) -> list:
    """data.sources / data.eval_sources: a list of {path, weight?, split?, name?, column?, dtype?}."""
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list of {{path, weight, split?, name?}}, got {value!r}")
    out = []
    for n, item in enumerate(value):
        item = {"path": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "path" not in item:
            raise ConfigError(f"{where}[{n}] must be a mapping with a path, got {item!r}")
        unknown = set(item) - set(SOURCE_KEYS)
        if unknown:
            raise ConfigError(f"{where}[{n}]: unknown key(s) {', '.join(sorted(unknown))} (known: "
                              f"{', '.join(SOURCE_KEYS)})")
        entry = {"path": _coerce(f"{where}[{n}].path", item["path"], str),
                 "weight": _coerce(f"{where}[{n}].weight", item.get("weight", 1.0), float)}
        for key in ("split", "name", "column", "dtype"):
            if item.get(key) not in (None, ""):
                entry[key] = _coerce(f"{where}[{n}].{key}", item[key], str)
        if not entry["weight"] > 0:
            raise ConfigError(f"{where}[{n}].weight must be positive, got {entry['weight']!r}")
        if entry.get("split", "train") not in ("train", "val"):
            raise ConfigError(f"{where}[{n}].split must be train or val, got {entry['split']!r}")
        out.append(entry)
    return out


def brief(text: str, limit: int = 120) -> str:
    """`text` for an error line: whole when short, else its start and end around an ellipsis."""
    return text if len(text) <= limit else f"{text[:limit - 30]}...{text[-25:]}"


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
    """Assign section.key = value (or section.sub.key = value, e.g. train.guard.window) with the
    schema's checks; a mapping given for a sub-section sets its keys one by one."""
    section_name, _, key = dotted.partition(".")
    if section_name not in _SECTIONS or not key:
        raise ConfigError(f"unknown key {dotted!r} (sections: {', '.join(_SECTIONS)})")
    section, where = getattr(config, section_name), section_name
    while True:
        hints = typing.get_type_hints(type(section))
        name, _, rest = key.partition(".")
        if name not in hints:
            raise ConfigError(f"unknown key {dotted!r} (known in {where}: {', '.join(hints)})")
        if not dataclasses.is_dataclass(hints[name]):
            break
        if not rest:   # a whole sub-section: a mapping of its keys
            if value is None:
                return
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted} must be a mapping of its keys, got a "
                                  f"{type(value).__name__}")
            for sub, item in value.items():
                set_value(config, f"{dotted}.{sub}", item)
            return
        section, where, key = getattr(section, name), f"{where}.{name}", rest
    if rest:
        raise ConfigError(f"unknown key {dotted!r} ({where}.{name} has no sub-keys)")
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
        check_expansion(value, f"--set {dotted.strip()}")
        try:
            set_value(config, dotted.strip(), value)
        except ConfigError as exc:
            raise ConfigError(f"--set {brief(item)!r}: {exc}") from None
    try:
        return config.validate()
    except ConfigError as exc:
        given = " with --set " + brief(" ".join(overrides)) if overrides else ""
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
        check_expansion(raw, str(path))
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


# The most values (scalars, list items, mapping entries) run.yaml may hold once its YAML aliases
# are expanded: a real run.yaml holds a few hundred; a "billion laughs" (aliases of aliases) holds
# 10^9 in a few lines, which PyYAML shares by reference until something walks it.
MAX_EXPANDED_VALUES = 100_000


def expanded_values(data, limit: int = MAX_EXPANDED_VALUES) -> int:
    """How many values `data` holds with every shared (aliased) node counted at each use; stops
    counting past `limit`. Linear in the distinct nodes (each node's count is memoised)."""
    counts: dict[int, int] = {}

    def count(node) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key not in counts:
            counts[key] = 0   # a node that holds itself (an alias of an ancestor) counts once
            items = node.values() if isinstance(node, dict) else node
            total = 1
            for item in items:
                total += count(item)
                if total > limit:
                    break
            counts[key] = total
        return counts[key]

    return count(data)


def check_expansion(data, source: str) -> None:
    """ConfigError when YAML aliases make `data` expand past MAX_EXPANDED_VALUES (never reprs it)."""
    if expanded_values(data) > MAX_EXPANDED_VALUES:
        raise ConfigError(f"{source}: its YAML aliases expand to more than {MAX_EXPANDED_VALUES:,} "
                          "values (an alias bomb?): write the values out instead of aliasing them")


def dump_run_config(config: RunConfig, header: str = "") -> str:
    """run.yaml text: sections in schema order, a comment header."""
    body = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    return (header + "\n" if header else "") + body
