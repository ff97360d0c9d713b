"""`rl-service sweep` before Ray: the grid's points, their overrides, and bad grids (exit 2)."""

import json

import pytest

from rl_service.cli.main import main
from rl_service.config import ConfigError
from rl_service.sweep.grid import check_points, grid_points
from rl_service.sweep.trial import MetricFollower, final_metrics, train_command

QUICKSTART = "configs/quickstart.yaml"


def test_points_are_the_cross_product_first_grid_slowest_then_seeds():
    points = grid_points(["learner.lr=3e-5,1e-4", "learner.advantage=grpo,rloo"])
    assert points == [
        {"learner.lr": "3e-5", "learner.advantage": "grpo"},
        {"learner.lr": "3e-5", "learner.advantage": "rloo"},
        {"learner.lr": "1e-4", "learner.advantage": "grpo"},
        {"learner.lr": "1e-4", "learner.advantage": "rloo"},
    ]
    seeded = grid_points(["learner.lr=1e-4,3e-4"], samples=2, base_seed=7)
    pairs = [(p["learner.lr"], p["seed"]) for p in seeded]
    assert pairs == [("1e-4", "7"), ("1e-4", "8"), ("3e-4", "7"), ("3e-4", "8")]


@pytest.mark.parametrize(
    "specs, samples, message",
    [
        (["learner.lr"], 1, "expected KEY=V1,V2"),
        (["learner.lr=1e-4,"], 1, "non-empty values"),
        (["learner.lr=1,1"], 1, "listed twice"),
        (["learner.lr=1,2", "learner.lr=3"], 1, "a key is swept twice"),
        (["seed=1,2"], 2, "--samples N sweeps the seed itself"),
    ],
)
def test_bad_grids_are_one_line_errors(specs, samples, message):
    with pytest.raises(ConfigError, match=message):
        grid_points(specs, samples)


def test_a_point_whose_config_is_invalid_is_named_before_ray_starts(capsys):
    points = grid_points(["learner.lr=1e-4,-1"])
    with pytest.raises(ConfigError, match=r"trial 1 \(learner.lr=-1\): learner.lr"):
        check_points(QUICKSTART, [], points)
    code = main(["sweep", QUICKSTART, "--grid", "learner.advantage=grpo,ppo"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: trial 1 (learner.advantage=ppo)") and len(err.splitlines()) == 1


def test_a_trial_trains_its_point_under_its_own_name_and_resumes(tmp_path):
    from rl_service.sweep.trial import SweepSpec

    point = {"learner.lr": "1e-4"}
    spec = SweepSpec("/abs/c.yaml", ("train.steps=5",), (point,), str(tmp_path), "eval/accuracy", "a", ".")
    cmd = train_command(spec, 0)
    assert cmd[1:] == [
        "-m", "rl_service.cli", "train", "/abs/c.yaml", "train.steps=5", "learner.lr=1e-4", "name=trial-000",
        f"run_root={tmp_path}", "--resume", "auto",
    ]  # fmt: skip


def test_the_follower_reports_each_eval_once_across_a_rewrite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "reward/mean": 0.1}, {"step": 2, "eval/accuracy": 0.4}, {"step": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "eval/acc')  # torn last line
    follower = MetricFollower(path, "eval/accuracy")
    assert follower.new_rows() == [{"step": 2, "eval/accuracy": 0.4}]
    assert follower.new_rows() == []
    # a restart from the step-2 checkpoint rewrites the later rows: only new evals are reported
    rows = rows[:2] + [{"step": 3}, {"step": 4, "eval/accuracy": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert follower.new_rows() == [{"step": 4, "eval/accuracy": 0.5}]


def test_final_metrics_read_the_end_of_the_summary():
    summary = {"steps": 6, "wall_s": 12.5, "eval/accuracy_end": 0.6, "eval/accuracy_start": 0.4, "x": 1}
    out = final_metrics(summary, "eval/accuracy")
    evals = {"eval/accuracy_end": 0.6, "eval/accuracy_start": 0.4}
    assert out == {"eval/accuracy": 0.6, **evals, "step": 6, "wall_s": 12.5}
