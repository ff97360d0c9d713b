"""Config errors fail fast with one line naming the key, and the CLI exits 2 before Ray starts."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_service.config import ConfigError, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_quickstart_loads_and_overrides_apply():
    cfg = load_config(QUICKSTART, ["learner.lr=1e-5", "rollout.num_workers=3", "learner.kl.target=0.1"])
    assert cfg.learner.lr == 1e-5
    assert cfg.rollout.num_workers == 3
    assert cfg.learner.kl.target == 0.1
    assert load_config(QUICKSTART).learner.lr != 1e-5


def test_override_parsing_types():
    assert parse_overrides(["a.b=1e-5", "a.c=true", "d=[1, 2]", "e=hello"]) == {
        "a": {"b": 1e-5, "c": True},
        "d": [1, 2],
        "e": "hello",
    }


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["learner.lrr=1"], "learner.lrr: unknown key"),
        (["bogus=1"], "bogus: unknown key"),
        (["learner.lr=fast"], "learner.lr"),
        (["rollout.num_workers=0"], "rollout.num_workers"),
        (["rollout.engine=tensorrt"], "rollout.engine"),
        (["train.prompts_per_step=60"], "divisible by rollout.prompts_per_batch"),
        (["learner.advantage=grpo", "rollout.samples_per_prompt=1"], "samples_per_prompt >= 2"),
        (["model.path=/nonexistent/model"], "model.path"),
        (["reward.fn=no_such_builtin"], "reward.fn: unknown built-in"),
        (["reward.fn=no.such.module:fn"], "reward.fn: cannot load"),
        (["reward.fn=/nonexistent/file.py:fn"], "reward.fn: cannot load"),
        (["learner.lr"], "expected key=value"),
        (["placement=together"], "placement"),
        (
            ["placement=colocated"],
            "placement: colocated takes turns (generate, then train) and needs train.max_policy_lag=0",
        ),
        (
            ["placement=colocated", "train.max_policy_lag=0", "rollout.num_workers=3"],
            "rollout.num_workers (3) must equal learner.num_workers (2)",
        ),
        (["placement=colocated", "train.max_policy_lag=0", "serve.enabled=true"], "serve.enabled"),
        (
            ["placement=colocated", "train.max_policy_lag=0", "rollout.weight_sync=collective"],
            "rollout.weight_sync=collective is for placement: split",
        ),
    ],
)
def test_bad_config_names_the_key(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, overrides)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_colocated_placement_is_opt_in_and_loads_with_lag_0():
    assert load_config(QUICKSTART).placement == "split"
    cfg = load_config(QUICKSTART, ["placement=colocated", "train.max_policy_lag=0"])
    assert cfg.placement == "colocated"


def test_colocated_engines_reserve_no_cpus_of_their_own():
    from rl_service.infra.session import requested_cpus

    split = load_config(QUICKSTART, ["train.max_policy_lag=0"])
    colocated = load_config(QUICKSTART, ["placement=colocated", "train.max_policy_lag=0"])
    engines = split.rollout.num_workers * split.rollout.resources.num_cpus
    assert requested_cpus(colocated) == pytest.approx(requested_cpus(split) - engines)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(ROOT / "configs" / "nope.yaml")


def test_user_reward_fn_from_file_resolves(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text("def score(prompt, completion, **meta):\n    return float(len(completion))\n")
    cfg = load_config(QUICKSTART, [f"reward.fn={f}:score"])
    assert cfg.reward.fn.endswith("my_reward.py:score")
    with pytest.raises(ConfigError, match="no callable 'missing'"):
        load_config(QUICKSTART, [f"reward.fn={f}:missing"])


def test_cli_exits_2_with_one_line_before_ray(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "rl_service.cli", "train", str(QUICKSTART), "learner.lrr=1", f"run_root={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: learner.lrr: unknown key (check the spelling; see rl_service/config/)"]
    assert not any(tmp_path.iterdir())  # no run dir, nothing started
    assert "ray" not in proc.stdout.lower()
    assert time.perf_counter() - start < 60
