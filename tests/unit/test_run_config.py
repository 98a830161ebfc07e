"""run.yaml: schema, validation, --set overrides."""
import pytest

from llmlaunch.config import (ConfigError, RunConfig, apply_overrides, dump_run_config, from_dict,
                              load_run_config)


def test_round_trip_through_yaml(tmp_path):
    config = RunConfig()
    config.layout.dp, config.train.lr = 2, 1e-3
    path = tmp_path / "run.yaml"
    path.write_text(dump_run_config(config, "# header"))
    loaded = load_run_config(path)
    assert loaded.to_dict() == config.to_dict()


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'.*known in train: steps, lr"):
        from_dict({"train": {"lrr": 0.1}})


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="unknown section 'optim'"):
        from_dict({"optim": {}})


def test_ill_typed_value_is_named():
    with pytest.raises(ConfigError, match=r"layout.dp must be int, got 'two'"):
        from_dict({"layout": {"dp": "two"}})
    with pytest.raises(ConfigError, match=r"train.steps must be int, got True"):
        from_dict({"train": {"steps": True}})


def test_yaml11_exponent_strings_are_floats():
    assert from_dict({"train": {"lr": "3e-4"}}).train.lr == 3e-4


def test_set_overrides_are_checked_the_same_way():
    config = apply_overrides(RunConfig(), ["train.steps=20", "layout.recompute=full", "model.arch=llama"])
    assert config.train.steps == 20 and config.layout.recompute == "full" and config.model.arch == "llama"
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides(RunConfig(), ["train.steps"])
    with pytest.raises(ConfigError, match="unknown key 'train.step'"):
        apply_overrides(RunConfig(), ["train.step=3"])
    with pytest.raises(ConfigError, match="recompute"):
        apply_overrides(RunConfig(), ["layout.recompute=sometimes"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"ZeRO-2 with a pipeline \(pp=2\): DeepSpeed's pipeline "
                                          r"engine runs ZeRO 0 and 1 without offload; pin pp=1 "
                                          r"\(dp\*tp = 2"):
        from_dict({"layout": {"pp": 2, "zero_stage": 2}})
    from_dict({"layout": {"pp": 1, "zero_stage": 3, "offload": "optimizer+params"}})  # plain engine
    with pytest.raises(ConfigError, match="offload optimizer with a pipeline"):
        from_dict({"layout": {"pp": 2, "zero_stage": 1, "offload": "optimizer"}})
    with pytest.raises(ConfigError, match="offloading parameters needs ZeRO-3"):
        from_dict({"layout": {"zero_stage": 2, "offload": "optimizer+params"}})
    with pytest.raises(ConfigError, match="tp=3 does not divide heads=4"):
        from_dict({"model": {"heads": 4}, "layout": {"tp": 3}})
    with pytest.raises(ConfigError, match="min_lr"):
        from_dict({"train": {"lr": 1e-4, "min_lr": 1e-3}})


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="cannot read run config") as missing:
        load_run_config(tmp_path / "missing.yaml")
    assert "built-in" not in str(missing.value)      # a path: no list of names


def test_an_unknown_config_name_lists_the_built_in_ones():
    with pytest.raises(ConfigError, match=r"cannot read run config 'tiny-gpu': .*; built-in "
                                          r"configs: gpt-1b-gpu, tiny-cpu"):
        load_run_config("tiny-gpu")


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: {arch: gpt2}\ntrain: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match=r"evil.yaml: YAML tags are not allowed \(line 2\)"):
        load_run_config(evil)


def test_errors_name_the_file_they_come_from(tmp_path):
    mine = tmp_path / "my-experiment.yaml"
    mine.write_text("layout: {tp: 3}\n")
    with pytest.raises(ConfigError, match=r"^\S*my-experiment.yaml: the layout does not fit the model: tp=3 does not divide heads=4"):
        load_run_config(mine)
    mine.write_text("train: {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"my-experiment.yaml: unknown key 'train.stepz'"):
        load_run_config(mine)
    mine.write_text("layout: {tp: 1}\n")
    with pytest.raises(ConfigError, match=r"--set 'train.steps=x': train.steps must be int"):
        load_run_config(mine, ["train.steps=x"])
    with pytest.raises(ConfigError, match=r"my-experiment.yaml with --set layout.tp=3: the layout does not fit the model: tp=3 "):
        load_run_config(mine, ["layout.tp=3"])


def test_a_run_pinned_to_offload_on_a_catalog_entry_without_host_figures_has_no_prediction():
    """The training log's prediction of an offload run on `cpu` (no host link or host memory
    bandwidth in the catalog) is one reason, not a ZeroDivisionError in CPU Adam's time."""
    from llmlaunch.topology.plan_inputs import estimate_layout

    config = from_dict({"layout": {"zero_stage": 2, "offload": "optimizer"}})
    inputs = config.plan_inputs("fp32", layout=config.layout_obj())
    with pytest.raises(ValueError, match=r"offload on cpu: the catalog has no host link or host "
                                         r"memory bandwidth \(host_link_gb_per_s, "
                                         r"host_memory_gb_per_s\) to price it"):
        estimate_layout(inputs, config.layout_obj())
    config.cluster.gpu = "a100-80gb"     # the same pin where the catalog prices it: estimated
    inputs = config.plan_inputs("bf16", layout=config.layout_obj())
    assert estimate_layout(inputs, config.layout_obj()).step.optimizer_s > 0


def test_an_moe_model_with_context_or_sequence_parallelism_is_refused_in_one_line():
    """Experts run at cp = 1 without sequence parallelism (issues 25 and 26 each tested their own
    half): the combination is refused before any rank starts, at ep 1 and above."""
    moe = {"arch": "mixtral", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "vocab": 256,
           "seq_len": 32, "experts": 4, "experts_per_token": 2}
    from_dict({"model": moe, "layout": {"dp": 2, "ep": 2}})
    with pytest.raises(ConfigError, match=r"MoE model: llmlaunch's model runs experts at cp = 1"):
        from_dict({"model": moe, "layout": {"cp": 2}})
    with pytest.raises(ConfigError, match=r"expert parallelism \(ep=2\) with context or sequence "
                                          r"parallelism is an estimate"):
        from_dict({"model": moe, "layout": {"dp": 2, "ep": 2, "tp": 2, "sequence_parallel": True}})
