"""`rl-service` commands: one module per group, the exit codes, and the run dir they write to."""

import pytest

from rl_service.cli import cluster, ilql, jobs, online, preference, report, serve, sft, sweep, train
from rl_service.cli.main import build_parser, main
from rl_service.config import Config, ConfigError
from rl_service.controller.run_dir import prepare_run_dir, summary_lines

GROUPS = {
    train: ["train", "build-model"],
    sft: ["sft"],
    sweep: ["sweep"],
    jobs: ["submit", "status", "logs", "stop", "list"],
    cluster: ["cluster"],
    report: ["report"],
    serve: ["serve", "feedback"],
    online: ["online"],
    preference: ["train-rm", "train-dpo"],
    ilql: ["train-ilql"],
}
ARGS = {
    "status": ["x"],
    "logs": ["x"],
    "stop": ["x"],
    "cluster": ["up"],
    "report": ["r"],
    "serve": ["--checkpoint", "c"],
    "sweep": ["c.yaml", "--grid", "learner.lr=1,2"],
}


def _commands(parser) -> list[str]:
    return list(next(a for a in parser._actions if a.dest == "command").choices)


def test_commands_in_help_order_each_handled_by_its_group_module():
    parser = build_parser()
    assert _commands(parser) == [c for names in GROUPS.values() for c in names]
    for module, names in GROUPS.items():
        for name in names:
            if name == "feedback":
                argv = ["feedback", "export", "--out", "x"]
            elif name in ARGS:
                argv = [name, *ARGS[name]]
            elif name in ("submit", "train", "build-model", "sft", "train-rm", "train-dpo", "online", "train-ilql"):
                argv = [name, "c.yaml"]
            else:
                argv = [name]
            assert parser.parse_args(argv).fn.__module__ == module.__name__, name


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["cluster", "up", "--node", "bad", "--dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: node 'bad': expected name:cpus") and err.count("\n") == 1
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["bogus"]) == 2  # argparse's usage message


def test_cluster_status_without_a_cluster_exits_1(tmp_path, capsys):
    assert main(["cluster", "status", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out == f"no cluster recorded in {tmp_path}\n"


def test_fresh_run_moves_the_previous_one_aside_and_resume_continues_in_place(tmp_path):
    cfg = Config(name="exp", run_root=str(tmp_path))
    first = prepare_run_dir(cfg)
    (first / "metrics.jsonl").write_text("old\n")
    assert (first / "config.yaml").is_file()
    again = prepare_run_dir(cfg, keep=True)  # resuming: nothing moved
    assert again == first and (again / "metrics.jsonl").read_text() == "old\n"
    fresh = prepare_run_dir(cfg)
    assert fresh == first and not (fresh / "metrics.jsonl").exists()
    (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith("exp.prev-")]
    assert (moved / "metrics.jsonl").read_text() == "old\n"


def test_a_run_starting_from_a_model_inside_its_own_run_dir_is_refused(tmp_path):
    sft = Config(name="exp", run_root=str(tmp_path))
    final = prepare_run_dir(sft) / "final"  # what `rl-service sft` leaves, reused as model.path
    final.mkdir()
    (final / "config.json").write_text("{}")
    rl = Config(name="exp", run_root=str(tmp_path), model={"path": str(final)})
    with pytest.raises(ConfigError, match="inside .*exp, which this run would move aside"):
        prepare_run_dir(rl)
    assert (final / "config.json").is_file() and not [p for p in tmp_path.iterdir() if ".prev-" in p.name]
    assert prepare_run_dir(Config(name="exp-rl", run_root=str(tmp_path), model={"path": str(final)})).is_dir()


def test_summary_lines_report_restarts_only_when_there_were_some(tmp_path):
    s = {
        "eval/accuracy_start": 0.25,
        "eval/accuracy_end": 0.5,
        "eval/accuracy_gain": 0.25,
        "steps": 3,
        "wall_s": 12.4,
        "samples/trained": 10,
        "samples/dropped_stale": 1,
        "samples/dropped_invalid": 0,
        "samples/lost": 0,
        "faults/restarts_rollout": 0,
    }
    lines = summary_lines(s, tmp_path)
    assert lines[0] == "\nheld-out exact match: 0.250 -> 0.500 (+25.0 points) in 3 steps, 12 s"
    assert lines[1] == "samples: trained 10, dropped stale 1, dropped invalid 0, lost 0"
    assert lines[2] == f"outputs: {tmp_path}/ (metrics.jsonl, summary.json, final/)" and len(lines) == 3
    s.update({"faults/restarts_rollout": 2, "faults/batches_regenerated": 1, "faults/recover_s": 3.0})
    assert summary_lines(s, tmp_path)[2] == (
        "survived component failures (restarts): {'rollout': 2}; 1 batches regenerated, 3 s spent recovering"
    )


@pytest.mark.parametrize("flags", [{"data": "a", "feedback_db": "b"}, {"eval_data": "held.jsonl"}])
def test_preference_data_flags_that_do_not_go_together_are_config_errors(flags):
    from rl_service.config import ConfigError, PreferenceRunConfig
    from rl_service.preference.data import load_pairs

    with pytest.raises(ConfigError):
        load_pairs(PreferenceRunConfig(), **flags)
