"""Reward plug-ins: built-ins, module:fn and file.py:fn; junk rewards are reported, never scored 0."""

import math

import pytest

from rl_service.config import RewardConfig
from rl_service.reward.functions import InvalidReward, checked_reward, resolve_reward_fn
from rl_service.reward.scorer import RewardFunctionError, RewardScorer
from rl_service.types import RolloutBatch, Sample

PLUGIN = """
import math
def raises(prompt, completion, **meta):
    if completion == "boom":
        raise RuntimeError("kaboom")
    return 1.0
def nan_for_13(prompt, completion, **meta):
    return math.nan if completion == "13" else 0.5
def inf(prompt, completion, **meta):
    return math.inf
def text(prompt, completion, **meta):
    return "high"
def length(prompt, completion, answer="", **meta):
    return float(len(completion)) + (1.0 if completion == answer else 0.0)
def vector(prompt, completion, **meta):
    import torch
    return torch.tensor([1.0, 2.0]) if completion == "two" else torch.tensor([0.25])
def hangs(prompt, completion, **meta):
    import time
    if completion == "hang":
        time.sleep(3600)
    return 1.0
"""


def make_batch(texts, group=2):
    samples = tuple(
        Sample(
            sample_id=f"{i // group}/{i % group}",
            prompt_id=i // group,
            prompt_text="6+7=",
            prompt_ids=(1, 2),
            response_ids=(3,),
            response_logprobs=(-0.5,),
            response_text=t,
            policy_version=3,
            finish_reason="stop",
            metadata={"answer": "13"},
        )
        for i, t in enumerate(texts)
    )
    return RolloutBatch(batch_id=7, samples=samples, worker="rollout-0", policy_version=3, generate_s=0.1)


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "plugin_rewards.py"
    path.write_text(PLUGIN)
    return path


def test_builtin_addition_exact():
    fn = resolve_reward_fn("addition_exact")
    assert fn("6+7=", " 13", answer="13") == 1.0
    assert fn("6+7=", "12", answer="13") == 0.0


def test_module_and_file_specs(plugin, monkeypatch):
    assert resolve_reward_fn(f"{plugin}:length")("p", "13", answer="13") == 3.0
    monkeypatch.syspath_prepend(str(plugin.parent))
    assert resolve_reward_fn("plugin_rewards:length")("p", "1", answer="13") == 1.0


@pytest.mark.parametrize(
    "name, completion, reason",
    [
        ("raises", "boom", "raised RuntimeError: kaboom"),
        ("nan_for_13", "13", "returned nan"),
        ("inf", "x", "returned inf"),
        ("text", "x", "not a number"),
    ],
)
def test_checked_reward_rejects_junk(plugin, name, completion, reason):
    with pytest.raises(InvalidReward, match=reason):
        checked_reward(resolve_reward_fn(f"{plugin}:{name}"), "p", completion, {})


def test_scorer_drops_and_reports_sample_ids(plugin):
    scorer = RewardScorer(RewardConfig(fn=f"{plugin}:nan_for_13", on_error="drop"))
    out = scorer.score(make_batch(["13", "12", "11", "10"]))
    assert [s.sample_id for s in out.samples] == ["0/1", "1/0", "1/1"]
    assert out.rewards == (0.5, 0.5, 0.5)
    assert out.dropped == (("0/0", "invalid_reward: returned nan"),)
    assert all(math.isfinite(r) for r in out.rewards)
    assert out.policy_version == 3


def test_scorer_whole_groups_drops_siblings(plugin):
    scorer = RewardScorer(RewardConfig(fn=f"{plugin}:raises", on_error="drop"), whole_groups=True)
    out = scorer.score(make_batch(["ok", "boom", "ok", "ok"]))
    assert [s.sample_id for s in out.samples] == ["1/0", "1/1"]
    assert dict(out.dropped) == {"0/1": "invalid_reward: raised RuntimeError: kaboom", "0/0": "incomplete_group"}


def test_scorer_fail_policy_names_sample_and_batch(plugin):
    scorer = RewardScorer(RewardConfig(fn=f"{plugin}:raises", on_error="fail"))
    with pytest.raises(RewardFunctionError, match=r"sample 1/0 \(batch 7\).*kaboom"):
        scorer.score(make_batch(["ok", "ok", "boom", "ok"]))


def test_a_two_element_tensor_is_dropped_with_its_sample_id_not_a_dead_scorer(plugin):
    scorer = RewardScorer(RewardConfig(fn=f"{plugin}:vector", on_error="drop"))
    out = scorer.score(make_batch(["one", "two", "one", "one"]))
    assert [s.sample_id for s in out.samples] == ["0/0", "1/0", "1/1"] and out.rewards == (0.25, 0.25, 0.25)
    ((sid, reason),) = out.dropped
    assert sid == "0/1" and reason.startswith("invalid_reward: returned Tensor tensor([1., 2.]), not one number")
    with pytest.raises(RewardFunctionError, match=r"sample 0/1 \(batch 7\).*not one number"):
        RewardScorer(RewardConfig(fn=f"{plugin}:vector", on_error="fail")).score(make_batch(["one", "two"]))


def test_a_hung_call_is_given_up_after_timeout_s_and_treated_as_invalid(plugin):
    import time

    scorer = RewardScorer(RewardConfig(fn=f"{plugin}:hangs", on_error="drop", timeout_s=0.5))
    start = time.perf_counter()
    out = scorer.score(make_batch(["ok", "hang", "ok", "ok"]))
    assert time.perf_counter() - start < 5  # not the hour the call would take
    assert [s.sample_id for s in out.samples] == ["0/0", "1/0", "1/1"]
    assert dict(out.dropped)["0/1"] == "invalid_reward: did not return within reward.timeout_s=0.5 s"
    with pytest.raises(RewardFunctionError, match=r"sample 0/1 .*timeout_s=0.5"):
        fail = RewardScorer(RewardConfig(fn=f"{plugin}:hangs", on_error="fail", timeout_s=0.5))
        fail.score(make_batch(["ok", "hang"]))
