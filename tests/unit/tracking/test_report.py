"""`rl-service report RUN_DIR`: PNGs from metrics.jsonl, and the step-time breakdown."""

import json
import struct

from rl_service.cli.main import main
from rl_service.tracking.report import STAGES, make_report, step_breakdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, steps=4, with_idle=False):
    run_dir.mkdir()
    rows = []
    for s in range(1, steps + 1):
        r = {
            "step": s,
            "reward/mean": 0.1 * s,
            "reward/std": 0.05,
            "kl/mean": 0.01 * s,
            "kl/coef": 0.1,
            "entropy/mean": 2.0 - 0.1 * s,
            "response_length/mean": 4 + s,
            "response_length/clip_ratio": 0.0,
            "timing_s/generate": 1.0,
            "timing_s/reward": 0.1,
            "timing_s/train": 2.0,
            "timing_s/weight_sync": 0.2,
            "timing_s/step": 4.0,
        }
        if s == 2:
            r["eval/accuracy"] = 0.4
        if with_idle:
            r["timing_s/idle"] = 0.5
        rows.append(r)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"eval/accuracy_start": 0.3, "eval/accuracy_end": 0.5}))
    return rows


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_writes_five_pngs(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    paths = make_report(run)
    assert [p.name for p in paths] == [
        "reward_accuracy.png",
        "kl.png",
        "entropy.png",
        "response_length.png",
        "step_time.png",
    ]
    for p in paths:
        assert p.parent == run / "plots"
        w, h = _png_size(p)
        assert (w, h) == (700, 400)
        assert p.stat().st_size > 5000  # has drawn content, not an empty canvas


def test_step_breakdown_idle_is_the_unaccounted_rest():
    rows = [
        {
            "timing_s/generate": 1.0,
            "timing_s/reward": 0.5,
            "timing_s/train": 2.0,
            "timing_s/weight_sync": 0.5,
            "timing_s/step": 5.0,
        },
        {"timing_s/generate": 3.0, "timing_s/train": 3.0, "timing_s/step": 5.0},  # overlap: idle 0
        {"timing_s/train": 1.0, "timing_s/step": 2.0, "timing_s/idle": 0.25},
    ]  # logged idle wins
    parts = step_breakdown(rows)
    assert list(parts) == list(STAGES)
    assert parts["idle"] == [1.0, 0.0, 0.25]
    assert parts["reward"] == [0.5, 0.0, 0.0]


def test_cli_report_and_missing_run(tmp_path, capsys):
    run = tmp_path / "run"
    _write_run(run, with_idle=True)
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5 and all((tmp_path / "out").joinpath(p.split("/")[-1]).is_file() for p in printed)
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_report_tolerates_missing_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/mean": 0.0}) + "\n")
    paths = make_report(run)
    assert len(paths) == 5 and all(_png_size(p) for p in paths)


def test_text_metrics_get_a_panel_each_with_start_and_end_from_the_summary(tmp_path):
    from rl_service.tracking.report import eval_series

    run = tmp_path / "run"
    rows = _write_run(run)
    rows[1].update({"eval/rouge_l": 0.5, "eval/perplexity": 9.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"eval/rouge_l_start": 0.2, "eval/rouge_l_end": 0.7, "eval/perplexity_start": 12.0}
    (run / "summary.json").write_text(json.dumps(summary))
    assert eval_series(rows, summary, "eval/rouge_l") == ([0, 2, 4], [0.2, 0.5, 0.7])
    assert eval_series(rows, summary, "eval/perplexity") == ([0, 2], [12.0, 9.0])
    assert eval_series(rows, summary, "eval/bleu") == ([], [])
    paths = make_report(run)
    assert paths[-1].name == "eval_metrics.png"
    w, h = _png_size(paths[-1])
    assert w == 800 and h == 350  # two panels (rouge_l, perplexity) of 4 x 3.5 inches at 100 dpi


def test_no_eval_metrics_png_without_text_metrics(tmp_path):
    run = tmp_path / "run"
    _write_run(run)
    assert "eval_metrics.png" not in [p.name for p in make_report(run)]


def test_an_online_run_gets_its_own_panel(tmp_path):
    """An `rl-service online` run dir (rows are rounds and rollbacks) -> online.png only."""
    run = tmp_path / "online"
    run.mkdir()
    rows = [
        {"step": 1, "round": 1, "online/version_served": 1, "online/feedback_pairs_total": 70},
        {"step": 2, "online/version_served": 0, "online/rolled_back": 1, "online/feedback_pairs_total": 80},
        {"step": 3, "round": 2, "online/version_served": 2, "online/reward_mean": 0.4, "online/kl_max": 0.02},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path,) = make_report(run)
    assert path.name == "online.png" and _png_size(path) == (1000, 600)
    assert path.stat().st_size > 20000
