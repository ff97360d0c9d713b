"""The online service's decisions, each on its own: the served-version bookkeeping and rollback
target, the round guards, the version board's rollback, the prompt split shared with the pairs'
split, the round configs (they validate as train / train-rm configs), and the operator CLI's
refusals (one line, exit 2, nothing queued)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rl_service.config.loading import build_config, load_online_config, validate
from rl_service.config.run import PreferenceRunConfig
from rl_service.online import rounds
from rl_service.online.checks import round_problems
from rl_service.online.state import OnlineState
from rl_service.preference.data import split_by_prompt
from rl_service.serving.follow import VersionBoard
from tests.integration.conftest import REPO
from tests.integration.conftest import tiny_model_dir as tiny_model_dir  # noqa: F401 - the session fixture

CONFIG = REPO / "configs" / "ci" / "online.yaml"


def _state(*statuses: str) -> OnlineState:
    st = OnlineState()
    st.add_version(0, dir="v0", status="serving", round=0)
    st.history.append(0)
    for v, status in enumerate(statuses, 1):
        st.add_version(v, dir=f"v{v}", status="candidate", round=v)
        if status == "serving":
            st.set_serving(v)
        else:
            st.version(v)["status"] = status
    return st


def test_serving_history_and_the_rollback_target(tmp_path):
    st = _state("serving", "refused", "serving")
    assert st.serving == 3 and st.history == [0, 1, 3]
    assert [st.version(v)["status"] for v in range(4)] == ["retired", "retired", "refused", "serving"]
    assert st.previous_good() == 1  # never the refused v2
    st.set_serving(1, previous_status="rolled_back")
    assert st.version(3)["status"] == "rolled_back" and st.serving == 1
    assert st.previous_good() == 0  # v3 was rolled back, v1 is current
    st.save(tmp_path / "state.json")
    back = OnlineState.load(tmp_path / "state.json")
    assert back == st and back.next_version() == 4


def test_round_guards_on_kl_and_a_collapsing_reward():
    oc = load_online_config(None, ["online.max_kl=0.1", "online.max_reward_drop=1.0"]).online
    fine = [{"kl/mean": 0.0, "reward/mean": 0.2, "reward/std": 0.5}, {"kl/mean": 0.09, "reward/mean": -0.29}]
    assert round_problems(fine, oc) == []
    too_far = [fine[0], {"kl/mean": 0.11, "reward/mean": 0.3}]
    assert [p.split(" ")[0] for p in round_problems(too_far, oc)] == ["kl/mean"]
    collapsed = [fine[0], {"kl/mean": 0.05, "reward/mean": -0.31}]  # 0.2 - 1.0 * 0.5 = -0.3
    assert [p.split(" ")[0] for p in round_problems(collapsed, oc)] == ["reward/mean"]
    assert round_problems([fine[0], {"kl/mean": 0.0, "reward/mean": float("nan")}], oc)
    assert round_problems([], oc) == ["the PPO round logged no step"]
    unmeasured = [{"reward/mean": 0.2, "reward/std": 0.5}, {"reward/mean": 0.3}]  # no kl/mean: not a pass
    (problem,) = round_problems(unmeasured, oc)
    assert "no kl/mean" in problem


def test_the_board_rolls_back_only_when_asked():
    board = VersionBoard()
    assert board.publish(2, ["w2"]) and board.latest(0)[:3] == (1, 2, ["w2"])
    assert not board.publish(1, ["w1"])  # an older version: ignored, as for training follow
    assert board.latest(1) is None  # nothing newer than serial 1
    assert board.publish(1, ["w1"], rollback=True)
    assert board.latest(1)[:3] == (2, 1, ["w1"])  # a replica at serial 1 (v2) loads v1


def test_canary_prompts_are_on_the_held_out_side_of_the_pairs_split():
    prompts = [f"{a}+{b}=" for a in range(20) for b in range(10)]
    train, held = rounds.split_prompts(prompts, 0.25, seed=3)
    pairs = [{"prompt": p, "chosen": "1", "rejected": "2"} for p in prompts]
    _, held_pairs = split_by_prompt(pairs, 0.25, 3)
    assert set(held) == {p["prompt"] for p in held_pairs} and not set(train) & set(held)
    assert 20 < len(held) < 80


def test_round_configs_validate_as_train_and_train_rm_configs(tmp_path, tiny_model_dir):
    cfg = load_online_config(CONFIG, [f"run_root={tmp_path}"])
    (tmp_path / "p.jsonl").write_text('{"prompt": "1+2="}\n')
    rm = str(tiny_model_dir)  # any HF directory passes the config check
    data = rounds.ppo_config(cfg, str(tiny_model_dir), rm, tmp_path / "p.jsonl", tmp_path / "p.jsonl", 1)
    train = build_config(data)
    assert train.model.path == str(tiny_model_dir) and train.reward.model == rm
    assert train.train.steps == cfg.online.ppo_steps and train.task.name == "dataset"
    assert train.learner.kl.coef == cfg.learner.kl.coef > 0  # the leash to the served version
    assert not train.serve.enabled and train.ray.address is None
    first = validate(PreferenceRunConfig, rounds.rm_config(cfg, None))
    assert first.model.build == cfg.model.build and first.preference.steps == cfg.preference.steps
    warm = validate(PreferenceRunConfig, rounds.rm_config(cfg, str(tiny_model_dir)))
    assert warm.model.path == str(tiny_model_dir)
    extra = load_online_config(CONFIG, [f"run_root={tmp_path}", "preference.rm_extra_layers=2"])
    assert validate(PreferenceRunConfig, rounds.rm_config(extra, None)).preference.rm_extra_layers == 2
    assert validate(PreferenceRunConfig, rounds.rm_config(extra, rm)).preference.rm_extra_layers == 0  # has them
    unmeasured = load_online_config(CONFIG, ["learner.kl.coef=0", "learner.kl.measure_every=0"])
    data = rounds.ppo_config(unmeasured, str(tiny_model_dir), rm, tmp_path / "p.jsonl", tmp_path / "p.jsonl", 1)
    assert build_config(data).learner.kl.measure_every == 1  # the KL guard always has kl/mean


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rl_service.cli", "online", str(CONFIG), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_operator_requests_are_checked_before_they_are_queued(tmp_path):
    done = _cli(f"run_root={tmp_path}", "--status")
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ")
    assert "no online service state" in done.stderr
    st = _state("serving", "refused")
    (tmp_path / "ci-online" / "online").mkdir(parents=True)
    st.save(tmp_path / "ci-online" / "online" / "state.json")
    for args, msg in ((["--pin", "7"], "no version 7"), (["--rollback", "2"], "v2 is refused")):
        done = _cli(f"run_root={tmp_path}", *args)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and msg in done.stderr
    assert not (tmp_path / "ci-online" / "online" / "operator.jsonl").exists()
    done = _cli(f"run_root={tmp_path}", "--rollback")  # no service runs: queued for its next start
    assert done.returncode == 0 and "queued rollback" in done.stdout
    (line,) = (tmp_path / "ci-online" / "online" / "operator.jsonl").read_text().splitlines()
    assert json.loads(line)["op"] == "rollback"
    status = json.loads(_cli(f"run_root={tmp_path}", "--status").stdout)
    assert status["serving"] == 1 and status["versions"]["2"]["status"] == "refused"


@pytest.mark.parametrize("bad", ["serve.enabled=true", "placement=colocated", "online.rm_every=0"])
def test_impossible_service_configs_are_refused(bad):
    from rl_service.config import ConfigError

    with pytest.raises(ConfigError):
        load_online_config(CONFIG, [bad])
