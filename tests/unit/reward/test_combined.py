"""reward.fns: the weighted sum, its names and parts, its config checks, and the parts reaching
the step metrics as reward/<name>."""

import re
from pathlib import Path

import pytest

from rl_service.config import ConfigError, RewardConfig, load_config
from rl_service.config.reward import RESERVED_PART_NAMES
from rl_service.reward.combined import build_reward
from rl_service.reward.functions import InvalidReward
from rl_service.reward.scorer import RewardFunctionError, RewardScorer
from rl_service.types import BatchSummary
from tests.unit.controller.test_step_metrics import halted_step_row
from tests.unit.reward.test_functions import make_batch

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
ANSWER_TAG = r".*<answer>.*</answer>"
USER_REWARDS = """
def length_penalty(prompt, completion, limit=4, **meta):
    return -max(0, len(completion) - limit)
def strict(prompt, completion, answer):
    return float(completion == answer)
def nan_on_boom(prompt, completion, **meta):
    return float("nan") if completion == "boom" else 1.0
"""


@pytest.fixture
def user_rewards(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    return path


def fns_cfg(*entries, **kw) -> RewardConfig:
    return RewardConfig(fns=list(entries), **kw)


def test_weighted_sum_and_unweighted_parts(user_rewards):
    reward = build_reward(
        fns_cfg(
            {"fn": "regex_format", "weight": 0.25, "args": {"pattern": ANSWER_TAG}},
            {"fn": "numeric_match"},
            {"fn": f"{user_rewards}:length_penalty", "weight": 0.5, "name": "brevity", "args": {"limit": 20}},
        )
    )
    assert reward.log_parts and reward.names == ("regex_format", "numeric_match", "brevity")
    completion = "so <answer>13</answer>"  # 22 chars: 2 over the limit
    total, parts = reward.score("6+7=", completion, {"answer": "13"})
    assert parts == {"regex_format": 1.0, "numeric_match": 1.0, "brevity": -2.0}
    assert total == 0.25 * 1.0 + 1.0 * 1.0 + 0.5 * -2.0
    total, parts = reward.score("6+7=", "14", {"answer": "13"})
    assert parts == {"regex_format": 0.0, "numeric_match": 0.0, "brevity": 0.0} and total == 0.0


def test_args_win_over_row_fields_and_point_at_another_field():
    reward = build_reward(fns_cfg({"fn": "exact_match", "args": {"answer_key": "label"}}))
    assert reward.score("q", "Yes", {"answer": "no", "label": "yes"})[0] == 1.0
    reward = build_reward(fns_cfg({"fn": "regex_format", "args": {"pattern": "a+"}}))
    assert reward.score("q", "aaa", {"pattern": "b+"})[0] == 1.0  # a row field named `pattern` loses


def test_single_fn_is_one_term_of_weight_one_without_parts():
    reward = build_reward(RewardConfig(fn="addition_exact"))
    assert not reward.log_parts and reward.score("6+7=", "13", {"answer": "13"}) == (1.0, {"addition_exact": 1.0})


def test_failing_entry_is_named(user_rewards):
    reward = build_reward(fns_cfg({"fn": "exact_match"}, {"fn": f"{user_rewards}:nan_on_boom", "name": "sane"}))
    with pytest.raises(InvalidReward, match=r"^sane \(fns\.1\) returned nan$"):
        reward.score("q", "boom", {"answer": "x"})
    with pytest.raises(InvalidReward, match=r"^exact_match \(fns\.0\) raised ValueError: the row has no 'answer'"):
        reward.score("q", "ok", {})


def _bad(overrides):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, overrides)
    line = str(err.value)
    assert "\n" not in line
    return line


@pytest.mark.parametrize(
    "fns, extra, message",
    [
        ("[{fn: no_such}]", [], "reward.fns.0.fn: unknown built-in 'no_such'"),
        ("[{fn: exact_match}, {fn: nope.mod:f}]", [], "reward.fns.1.fn: cannot load 'nope.mod:f'"),
        ("[{fn: regex_format}]", [], "reward.fns.0.args: regex_format needs args.pattern"),
        (
            "[{fn: regex_format, args: {pattern: '(<a>'}}]",
            [],
            "reward.fns.0.args: regex_format: pattern: not a valid regex",
        ),
        ("[{fn: regex_format, args: {pattern: 3}}]", [], "reward.fns.0.args: regex_format: pattern: expected a regex"),
        ("[{fn: regex_format, args: {pattern: a, search: maybe}}]", [], "search: expected true or false"),
        (
            "[{fn: exact_match, args: {answer_kye: x}}]",
            [],
            "exact_match takes no argument 'answer_kye' (it takes: answer_key)",
        ),
        (
            "[{fn: numeric_match, args: {tolerance: -1}}]",
            [],
            "reward.fns.0.args: numeric_match: tolerance: expected a number >= 0",
        ),
        (
            "[{fn: math_verify, args: {answer_key: ''}}]",
            [],
            "reward.fns.0.args: math_verify: answer_key: expected a field name",
        ),
        ("[{fn: zero, args: {x: 1}}]", [], "zero takes no argument 'x'"),
        ("[{fn: exact_match}, {fn: exact_match}]", [], "reward.fns.1.name: 'exact_match' is used twice"),
        ("[{fn: exact_match, name: mean}]", [], "reward.fns.0.name: reward/mean is already a metric"),
        ("[{fn: exact_match, name: 'a/b'}]", [], "reward.fns.0.name: 'a/b' must be letters"),
        ("[{fn: exact_match, weight: .nan}]", [], "reward.fns.0.weight: Input should be a finite number"),
        ("[{fn: exact_match, wieght: 1}]", [], "reward.fns.0.wieght: unknown key"),
        ("[]", [], "reward.fns: List should have at least 1 item"),
        ("[{fn: exact_match}]", ["reward.fn=numeric_match"], "reward.fns: give either fn ('numeric_match') or fns"),
    ],
)
def test_bad_fns_is_one_config_error_line_naming_the_key(fns, extra, message):
    assert message in _bad([f"reward.fns={fns}", *extra])


def test_fns_with_a_reward_model_is_an_error(tmp_path):
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    line = _bad([f"reward.model={tmp_path / 'rm'}", "reward.fns=[{fn: exact_match}]"])
    assert line == "reward.fns: a reward model (model) replaces the reward functions; give one or the other"


def test_user_fn_args_checked_against_its_parameters(user_rewards):
    line = _bad([f"reward.fns=[{{fn: '{user_rewards}:strict', args: {{limit: 3}}}}]"])
    assert "reward.fns.0.args:" in line and "takes no argument 'limit' (it takes: answer)" in line
    cfg = load_config(QUICKSTART, [f"reward.fns=[{{fn: '{user_rewards}:length_penalty', args: {{anything: 1}}}}]"])
    assert cfg.reward.fns[0].part_name == "length_penalty"  # **meta takes any argument


def test_good_fns_load_and_the_dumped_config_loads_back(tmp_path):
    from rl_service.config import dump_config

    cfg = load_config(
        QUICKSTART,
        [f"reward.fns=[{{fn: regex_format, weight: 0.2, args: {{pattern: '{ANSWER_TAG}'}}}}, {{fn: math_verify}}]"],
    )
    assert [(e.part_name, e.weight) for e in cfg.reward.fns] == [("regex_format", 0.2), ("math_verify", 1.0)]
    dump_config(cfg, tmp_path / "config.yaml")  # fn: addition_exact (the default) next to fns
    assert load_config(tmp_path / "config.yaml").reward == cfg.reward


def test_reserved_names_cover_every_reward_metric_the_code_writes():
    written = set()
    for path in (REPO / "rl_service").rglob("*.py"):
        written |= set(re.findall(r'"reward/([a-z_]+)"', path.read_text()))
    assert written and written <= RESERVED_PART_NAMES


def test_scorer_carries_parts_of_kept_samples_into_the_summary(user_rewards):
    cfg = fns_cfg(
        {"fn": "exact_match", "weight": 2.0},
        {"fn": f"{user_rewards}:nan_on_boom", "name": "sane", "weight": 0.5},
    )
    out = RewardScorer(cfg, whole_groups=True).score(make_batch(["13", "12", "boom", "13"]))
    assert [s.sample_id for s in out.samples] == ["0/0", "0/1"]  # group 1 dropped whole
    assert out.rewards == (2.5, 0.5)
    assert out.reward_parts == {"exact_match": (1.0, 0.0), "sane": (1.0, 1.0)}
    assert dict(out.dropped) == {"1/0": "invalid_reward: sane (fns.1) returned nan", "1/1": "incomplete_group"}
    assert BatchSummary.of(out).reward_part_sums == {"exact_match": 1.0, "sane": 2.0}


def test_scorer_fail_policy_names_the_entry(user_rewards):
    cfg = fns_cfg({"fn": f"{user_rewards}:nan_on_boom", "name": "sane"}, on_error="fail")
    with pytest.raises(RewardFunctionError, match=r"reward.fns on sample 0/1 \(batch 7\): sane \(fns.0\) returned nan"):
        RewardScorer(cfg).score(make_batch(["ok", "boom"]))


def test_single_fn_scorer_carries_no_parts():
    out = RewardScorer(RewardConfig(fn="addition_exact")).score(make_batch(["13", "12"]))
    assert out.reward_parts is None and BatchSummary.of(out).reward_part_sums is None


def _row(summaries):
    return halted_step_row(summaries, learner={"reward/mean": 0.5})


def test_parts_reach_the_step_metrics_as_means_over_kept_samples():
    cfg = fns_cfg({"fn": "exact_match"}, {"fn": "regex_format", "name": "fmt", "args": {"pattern": r"\d+"}})
    scorer = RewardScorer(cfg)
    summaries = [
        BatchSummary.of(scorer.score(make_batch(["13", "x13"]))),  # exact 1, 0; fmt 1, 0
        BatchSummary.of(scorer.score(make_batch(["13", "13", "12", "1 3"]))),  # exact 1, 1, 0, 0; fmt 1, 1, 1, 0
    ]
    row = _row(summaries)
    assert row["reward/exact_match"] == 3 / 6 and row["reward/fmt"] == 4 / 6
    assert list(row)[:3] == ["reward/mean", "reward/exact_match", "reward/fmt"]


def test_single_fn_adds_no_metric_keys():
    summaries = [BatchSummary.of(RewardScorer(RewardConfig()).score(make_batch(["13", "12"])))]
    assert [k for k in _row(summaries) if k.startswith("reward/")] == ["reward/mean"]


def test_an_override_that_is_not_yaml_is_a_config_error():
    line = _bad(['reward.fns=[{fn: regex_format, args: {pattern: "\\d+"}}]'])  # YAML "\d": bad escape
    assert line == "override 'reward.fns': not valid YAML (while scanning a double-quoted scalar)"
    cfg = load_config(QUICKSTART, ["reward.fns=[{fn: regex_format, args: {pattern: '\\d+'}}]"])
    assert cfg.reward.fns[0].args == {"pattern": "\\d+"}
