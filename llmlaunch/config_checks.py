"""run.yaml's cross-field checks (RunConfig.validate calls them after every value was type-checked):
each failure is one ConfigError naming the keys and what would work."""
from __future__ import annotations

from pathlib import Path

from llmlaunch.config_sections import ConfigError
from llmlaunch.topology.model_spec import untrainable_reasons
from llmlaunch.topology.optimizer_states import optimizer_refusal


def check_run_config(config, spec, layout) -> None:
    """Raise ConfigError for the first value run.yaml's sections allow one by one but not together
    (`config` a RunConfig, `spec` its ModelSpec, `layout` its Layout)."""
    untrainable = untrainable_reasons(spec)
    if untrainable:
        raise ConfigError(f"model: {'; '.join(untrainable)}")
    reasons = layout.model_reasons(spec)
    if reasons:
        raise ConfigError(f"the layout does not fit the model: {'; '.join(reasons)} "
                          "(layout.tp, layout.pp, layout.cp against the model section)")
    if not layout.runnable:
        raise ConfigError(f"layout: {layout.not_runnable_reason()}")
    if spec.moe and (layout.cp > 1 or layout.sequence_parallel):
        raise ConfigError("layout.cp > 1 or layout.sequence_parallel with an MoE model: llmlaunch's "
                          "model runs experts at cp = 1 without sequence parallelism; set "
                          "layout.cp: 1 and layout.sequence_parallel: false")
    if config.train.precision == "fp8":
        raise ConfigError("train.precision fp8 is an estimate (plan --precision fp8): "
                          "llmlaunch's model trains in bf16 or fp32; use auto, bf16 or fp32")
    if config.train.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got "
                          f"{config.train.precision!r}")
    precision = config.train.precision
    if precision == "auto":   # as a rank resolves it on the cluster's device
        precision = "fp32" if config.cluster.gpu == "cpu" else "bf16"
    refusal = optimizer_refusal(config.train.optimizer, layout.zero_stage, precision, spec,
                                layout.offload)
    if refusal:
        raise ConfigError(refusal)
    from llmlaunch.launcher.monitors import monitor_problems

    problem = monitor_problems(config.train.monitors, config.train.wandb_mode)
    if problem:
        raise ConfigError(problem)
    for key in ("steps",):
        if getattr(config.train, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1")
    if config.train.collective_timeout_s < 1:
        raise ConfigError("train.collective_timeout_s must be >= 1")
    for key in ("warmup_steps", "log_every"):
        if getattr(config.train, key) < 0:
            raise ConfigError(f"train.{key} must be >= 0")
    if config.data.dtype not in ("", "uint16", "uint32"):
        raise ConfigError(f"data.dtype must be uint16 or uint32 (or empty), got "
                          f"{config.data.dtype!r}")
    if config.data.sources and config.data.path:
        raise ConfigError("give data.path or data.sources, not both (a single path is "
                          "data.sources: [{path: ..., weight: 1}])")
    for key in ("sources", "eval_sources"):
        names = source_names(getattr(config.data, key))
        if len(set(names)) != len(names):
            raise ConfigError(f"data.{key}: two sources named "
                              f"{next(n for n in names if names.count(n) > 1)!r}: give each a "
                              "distinct name")
    if config.train.eval_every < 0 or config.train.eval_batches < 1:
        raise ConfigError("train.eval_every must be >= 0 and train.eval_batches >= 1")
    check_ranges(config)
    if not 0 <= config.train.min_lr <= config.train.lr:
        raise ConfigError("need 0 <= train.min_lr <= train.lr")
    if config.checkpoint.reshard not in ("auto", "never"):
        raise ConfigError(f"checkpoint.reshard must be auto or never, got "
                          f"{config.checkpoint.reshard!r}")
    if config.checkpoint.every < 0 or config.checkpoint.keep < 1:
        raise ConfigError("checkpoint.every must be >= 0 and checkpoint.keep >= 1")
    if config.checkpoint.healthy_steps < 1:
        raise ConfigError("checkpoint.healthy_steps must be >= 1")


# A collective that waits longer than a week is a hang, not a slow step; torch turns larger values
# into timeouts that overflow inside the ranks.
MAX_COLLECTIVE_TIMEOUT_S = 7 * 24 * 3600

# (key, lowest, highest, lowest allowed, highest allowed): the numeric keys whose range is not
# already checked above. Every float is finite already (config._coerce refuses nan and inf).
RANGES = (
    ("train.lr", 0.0, 1.0, False, True),
    ("train.weight_decay", 0.0, 1.0, True, True),
    ("train.grad_clip", 0.0, None, True, None),
    ("train.beta1", 0.0, 1.0, True, False),
    ("train.beta2", 0.0, 1.0, True, False),
    ("train.collective_timeout_s", 1, MAX_COLLECTIVE_TIMEOUT_S, True, True),
    ("train.guard.window", 1, None, True, None),
    ("train.guard.min_history", 0, None, True, None),
    ("train.guard.spike_mads", 0.0, None, False, None),
    ("train.guard.spike_min_rise", 0.0, None, True, None),
    ("train.guard.max_loss_ratio", 0.0, None, True, None),
    ("train.guard.bad_steps", 1, None, True, None),
    ("train.guard.rollbacks", 0, None, True, None),
    ("train.stragglers.every", 0, None, True, None),
    ("train.stragglers.margin", 0.0, None, False, None),
)


def in_range(value, low, high, low_ok, high_ok) -> bool:
    above = value >= low if low_ok else value > low
    below = high is None or (value <= high if high_ok else value < high)
    return above and below


def check_ranges(config) -> None:
    """ConfigError naming the first numeric key outside its range, with the range."""
    for key, low, high, low_ok, high_ok in RANGES:
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not in_range(value, low, high, low_ok, high_ok):
            span = (f"{'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
                    if high is not None else f"{'>=' if low_ok else '>'} {low}")
            raise ConfigError(f"{key} must be {'in ' if high is not None else ''}{span}, "
                              f"got {value}")


def source_names(sources: list) -> list[str]:
    """Each source's name: its `name`, else its path's last part."""
    return [s.get("name") or Path(s["path"]).name for s in sources]
