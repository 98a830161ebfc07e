"""The guard's pure parts (launcher/guard.py): the verdict on one step, the decision after it, the
skip record; run.yaml's refusals of bad numbers and alias bombs; metrics.jsonl stays strict JSON."""
import json
import math
import time

import pytest

from llmlaunch.config import (MAX_EXPANDED_VALUES, ConfigError, RunConfig, apply_overrides,
                              expanded_values, load_run_config)
from llmlaunch.config_sections import GuardSection
from llmlaunch.launcher.guard import (OK, ROLLBACK, SKIP, STOP, SkipRecord, conclude, judge, merge,
                                      spike_threshold)
from llmlaunch.launcher.guarded_step import parse_injection
from llmlaunch.launcher.metrics import MetricsLog, strict_record

pytestmark = pytest.mark.unit


def test_spike_threshold_is_median_plus_scaled_mad_by_hand():
    # history 1..5: median 3, |x - 3| = 2,1,0,1,2 -> MAD 1; 6 x 1.4826 x 1 = 8.8956 > 0.1 x 3
    assert spike_threshold([1, 2, 3, 4, 5], 6.0, 0.1) == pytest.approx(3 + 8.8956)
    # a flat history: MAD 0, the relative floor decides: 2 + 0.1 x 2
    assert spike_threshold([2.0] * 7, 6.0, 0.1) == pytest.approx(2.2)


def test_a_median_ignores_the_outlier_a_mean_would_follow():
    history = [3.0] * 9 + [300.0]
    assert spike_threshold(history, 6.0, 0.1) == pytest.approx(3.3)   # MAD 0: floor 10 %


def test_judge_names_what_is_wrong():
    g = GuardSection(min_history=3)
    assert judge(float("nan"), 1.0, [], g, 1024) == "loss is nan"
    assert judge(2.0, float("inf"), [], g, 1024) == "gradient norm is inf"
    assert "diverged" in judge(2 * math.log(1024) + 0.1, 1.0, [], g, 1024)
    assert judge(9.0, 1.0, [3.0, 3.1], g, 1024) is None            # too little history to judge
    assert judge(9.0, 1.0, [3.0, 3.1, 2.9], g, 1024).startswith("loss spike: 9 > ")
    assert judge(3.05, 1.0, [3.0, 3.1, 2.9], g, 1024) is None
    assert judge(9.0, None, [3.0, 3.1, 2.9], GuardSection(min_history=3, spike_mads=100,
                                                          spike_min_rise=5), 1024) is None


def test_conclude_skips_then_rolls_back_then_stops():
    assert conclude(0, 0, None, 3, True, 2).action == OK
    assert conclude(1, 7, "loss is nan", 3, True, 2).action == SKIP
    assert conclude(2, 7, "loss is nan", 3, True, 2).action == SKIP
    assert conclude(3, 7, "loss is nan", 3, True, 2).action == ROLLBACK
    no_tag = conclude(3, 7, "loss is nan", 3, False, 2)
    assert no_tag.action == STOP and "no verified checkpoint before step 7" in no_tag.reason
    spent = conclude(3, 7, "loss is nan", 3, True, 0)
    assert spent.action == STOP and "train.guard.rollbacks" in spent.reason
    assert "\n" not in spent.line(9)


def test_skip_record_positions_and_round_trip(tmp_path):
    record = SkipRecord()
    record.add(5, 5, SKIP, "loss is nan")
    record.add(9, 11, ROLLBACK, "loss spike", to=8)
    record.add(10, 12, SKIP, "x")
    assert record.ranges == [[5, 5], [9, 12]]
    assert [record.applied_steps(s) for s in (4, 5, 8, 10, 12, 20)] == [4, 4, 7, 7, 7, 15]
    assert record.skip_to(8) == 12 and record.skip_to(10) == 12 and record.skip_to(12) == 12
    assert record.skip_to(4) == 5 and record.skip_to(6) == 6
    record.rollbacks = 1
    record.write(tmp_path)
    again = SkipRecord.read(tmp_path)
    assert (again.ranges, again.rollbacks, len(again.events)) == ([[5, 5], [9, 12]], 1, 3)
    assert again.rollback_targets() == {8}       # never rolled back to twice
    (tmp_path / "skipped.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="is not a skip record"):
        SkipRecord.read(tmp_path)
    assert merge([[3, 4], [1, 2], [8, 9]]) == [[1, 4], [8, 9]]


def test_fault_injections_parse_and_a_typo_is_named():
    assert parse_injection("nan-grad@5:1, spike@9-11:50") == {"nan-grad": (5, 1),
                                                               "spike": (9, 11, 50.0)}
    with pytest.raises(ValueError, match="unknown fault 'nan@5'"):
        parse_injection("nan@5")


@pytest.mark.parametrize("item, words", [
    ("train.lr=.inf", "train.lr must be a finite number, got inf"),
    ("train.beta1=.nan", "train.beta1 must be a finite number, got nan"),
    ("train.beta2=1", "train.beta2 must be in [0.0, 1.0), got 1.0"),
    ("train.lr=0", "train.lr must be in (0.0, 1.0], got 0.0"),
    ("train.collective_timeout_s=99999999999", "train.collective_timeout_s must be in [1, 604800]"),
    ("train.guard.bad_steps=0", "train.guard.bad_steps must be >= 1, got 0"),
    ("train.guard.spike_mads=-inf", "train.guard.spike_mads must be a finite number"),
    ("train.guard.nope=1", "unknown key 'train.guard.nope' (known in train.guard: enabled,"),
    ("train.lr.x=1", "train.lr has no sub-keys"),
])
def test_bad_numbers_are_refused_naming_the_key(item, words):
    with pytest.raises(ConfigError) as exc:
        apply_overrides(RunConfig(), [item])
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_guard_keys_set_one_by_one_or_as_a_mapping(tmp_path):
    config = apply_overrides(RunConfig(), ["train.guard.window=20", "train.guard={bad_steps: 4}"])
    assert (config.train.guard.window, config.train.guard.bad_steps) == (20, 4)
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 0.001, guard: {enabled: false, rollbacks: 0}}\n")
    loaded = load_run_config(path)
    assert (loaded.train.guard.enabled, loaded.train.guard.rollbacks) == (False, 0)
    assert loaded.to_dict()["train"]["guard"]["window"] == 50


BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
model: {arch: *i}
"""


def test_a_billion_laughs_is_refused_at_once_with_a_short_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(BOMB)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        load_run_config(path)
    assert time.perf_counter() - started < 5     # today: 45 s and 2.5 GB, then a MemoryError
    assert "aliases expand to more than 100,000 values" in str(exc.value)
    assert len(str(exc.value)) < 300 and "lol" not in str(exc.value)
    bomb = ("model.arch={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
            "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
            "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}")
    with pytest.raises(ConfigError, match="--set model.arch: its YAML aliases"):
        apply_overrides(RunConfig(), [bomb])


def test_expanded_values_count_shared_nodes_at_every_use():
    inner = [1, 2, 3]
    assert expanded_values({"a": inner, "b": inner}) == 1 + (1 + 3) * 2
    assert expanded_values([[0] * 1000] * 1000) > MAX_EXPANDED_VALUES
    loop: list = []
    loop.append(loop)
    assert expanded_values(loop) == 1     # a node inside itself is counted once


def test_a_long_wrong_value_is_not_echoed_whole():
    with pytest.raises(ConfigError) as exc:
        apply_overrides(RunConfig(), ["model.arch=[" + ",".join(["1"] * 5000) + "]"])
    assert len(str(exc.value)) < 200


def test_metrics_are_strict_json_with_null_and_a_flag(tmp_path):
    assert strict_record({"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3}) \
        == {"step": 3, "loss": None, "grad_norm": None, "lr": 1e-3,
            "nonfinite": {"loss": "nan", "grad_norm": "inf"}}
    path = tmp_path / "metrics.jsonl"
    metrics = MetricsLog(path, 0)
    metrics.write({"step": 1, "loss": float("-inf")})
    metrics.close()
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"literal {c}")) == \
        {"step": 1, "loss": None, "nonfinite": {"loss": "-inf"}}


def test_the_run_page_marks_each_guard_decision():
    from llmlaunch.report.run_page import guard_section

    metrics = [{"step": 4, "loss": 3.0},
               {"step": 5, "loss": 3.1, "guard": {"action": "skip", "reason": "loss is nan"}},
               {"step": 11, "loss": 3.1, "guard": {"action": "rollback", "reason": "loss spike",
                                                   "to": 8}}]
    html = guard_section(metrics)
    assert 'id="guard"' in html and 'data-rows="2"' in html
    assert "<td>rollback</td><td>8</td>" in html.replace(' class=l', '') and "loss is nan" in html
    assert guard_section(metrics[:1]) == ""


def test_a_slow_rank_is_named_against_its_peers_and_a_slow_host_as_a_host():
    from llmlaunch.launcher.stragglers import describe, slow_hosts, slow_ranks

    # two stages of different cost: stage 1 is slower by nature, and its ranks are peers
    peers = [(0, 0), (0, 0), (1, 0), (1, 0), (0, 0), (1, 0)]
    hosts = ["a", "a", "a", "b", "b", "b"]
    seconds = [0.010, 0.010, 0.030, 0.060, 0.011, 0.029]
    slow = slow_ranks(seconds, hosts, peers, 0.25)
    assert [(s["rank"], s["host"], round(s["ratio"], 3)) for s in slow] == [(3, "b", 2.0)]
    assert slow_hosts(slow, hosts) == []
    hosts = ["a", "a", "a", "b", "b", "a"]
    both = slow_ranks([0.01, 0.01, 0.03, 0.06, 0.02, 0.03], hosts, peers, 0.25)
    assert slow_hosts(both, hosts) == ["b"]
    line = describe(both, ["b"], 11, 20)
    assert line.startswith("stragglers over steps 11-20: host b (all its ranks); rank 3 on b 2.0x")
    assert slow_ranks([0.01], ["a"], [(0, 0)], 0.25) == []      # no peer: nothing to compare
