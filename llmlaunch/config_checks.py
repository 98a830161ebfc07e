"""run.yaml's cross-field checks (RunConfig.validate calls them after every value was type-checked):
each failure is one ConfigError naming the keys and what would work."""
from __future__ import annotations

from pathlib import Path

from llmlaunch.config_sections import ConfigError
from llmlaunch.topology.model_spec import untrainable_reasons


def check_run_config(config, spec, layout) -> None:
    """Raise ConfigError for the first value run.yaml's sections allow one by one but not together
    (`config` a RunConfig, `spec` its ModelSpec, `layout` its Layout)."""
    untrainable = untrainable_reasons(spec)
    if untrainable:
        raise ConfigError(f"model: {'; '.join(untrainable)}")
    reasons = layout.model_reasons(spec)
    if reasons:
        raise ConfigError(f"the layout does not fit the model: {'; '.join(reasons)} "
                          "(layout.tp, layout.pp against the model section)")
    if not layout.runnable:
        raise ConfigError(f"layout: {layout.not_runnable_reason()}")
    if config.train.precision == "fp8":
        raise ConfigError("train.precision fp8 is an estimate (plan --precision fp8): "
                          "llmlaunch's model trains in bf16 or fp32; use auto, bf16 or fp32")
    if config.train.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got "
                          f"{config.train.precision!r}")
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
    if not 0 <= config.train.min_lr <= config.train.lr:
        raise ConfigError("need 0 <= train.min_lr <= train.lr")
    if config.checkpoint.reshard not in ("auto", "never"):
        raise ConfigError(f"checkpoint.reshard must be auto or never, got "
                          f"{config.checkpoint.reshard!r}")
    if config.checkpoint.every < 0 or config.checkpoint.keep < 1:
        raise ConfigError("checkpoint.every must be >= 0 and checkpoint.keep >= 1")
    if config.checkpoint.healthy_steps < 1:
        raise ConfigError("checkpoint.healthy_steps must be >= 1")


def source_names(sources: list) -> list[str]:
    """Each source's name: its `name`, else its path's last part."""
    return [s.get("name") or Path(s["path"]).name for s in sources]
