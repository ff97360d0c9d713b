"""`rl-service report RUN_DIR`: PNG plots of `RUN_DIR/metrics.jsonl` (+ summary.json).

    reward_accuracy.png   reward/mean (± reward/std band) and held-out accuracy per step
    kl.png                kl/mean (and kl/coef when the penalty is adaptive)
    entropy.png           entropy/mean
    response_length.png   response_length/mean (and clip ratio)
    step_time.png         stacked seconds per step: generate / reward / train / weight_sync / idle
    eval_metrics.png      eval/rouge_l, eval/bleu, eval/perplexity per evaluation, one panel each
                          (only for runs with eval.metrics)
    online.png            an `rl-service online` run dir instead (its rows are rounds): version served,
                          feedback pairs, reward-model accuracy, each round's reward and KL, rollbacks

Idle is the part of a step not spent in the other four (`timing_s/idle` when the run logged
it, else step - generate - reward - train - weight_sync, floored at 0): time the learner
waited on a queue that the workers could not fill faster. Missing metrics leave a panel
saying so instead of failing the report.
"""

from __future__ import annotations

import json
from pathlib import Path

STAGES = ("generate", "reward", "train", "weight_sync", "idle")


def load_metrics(run_dir: str | Path) -> tuple[list[dict], dict]:
    """Rows of metrics.jsonl (one per step, in order) and summary.json ({} if absent)."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: RUN_DIR must be a run directory (runs/<name>/)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return rows, summary


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that have a numeric `key`."""
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(r.get("step", i + 1))
            ys.append(float(v))
    return xs, ys


TEXT_METRICS = ("eval/rouge_l", "eval/bleu", "eval/perplexity")


def eval_series(rows: list[dict], summary: dict, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of a held-out metric: step 0 and the last step come from summary.json's
    `<key>_start` / `<key>_end` (measured outside the step loop), the rest from metrics.jsonl."""
    xs, ys = series(rows, key)
    if f"{key}_start" in summary:
        xs, ys = [0] + xs, [summary[f"{key}_start"]] + ys
    if f"{key}_end" in summary and rows:
        xs, ys = xs + [rows[-1].get("step", len(rows))], ys + [summary[f"{key}_end"]]
    return xs, ys


def step_breakdown(rows: list[dict]) -> dict[str, list[float]]:
    """Seconds per stage per step: {stage: [s, ...]} with one entry per row."""
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for r in rows:
        parts = {s: float(r.get(f"timing_s/{s}") or 0.0) for s in STAGES[:-1]}
        idle = r.get("timing_s/idle")
        if not isinstance(idle, (int, float)):
            idle = max(0.0, float(r.get("timing_s/step") or 0.0) - sum(parts.values()))
        parts["idle"] = float(idle)
        for s in STAGES:
            out[s].append(parts[s])
    return out


def _line(ax, rows, key, label=None, **kw) -> bool:
    xs, ys = series(rows, key)
    if xs:
        ax.plot(xs, ys, marker="o", markersize=3, label=label or key, **kw)
    return bool(xs)


def _missing(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in metrics.jsonl", ha="center", va="center", transform=ax.transAxes)


def _save(fig, ax, path: Path, title: str) -> Path:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


ONLINE_PANELS = (
    (("online/version_served",), "version served"),
    (("online/feedback_pairs_total",), "preference pairs in the store"),
    (("online/rm_accuracy", "online/rm_refit_accuracy"), "reward model held-out accuracy"),
    (("online/reward_mean", "online/kl_max", "online/canary_live"), "round reward, KL, live canary"),
)


def _online(plt, rows: list[dict], path: Path, name: str) -> Path:
    """The online service's rows (one per round or rollback): four panels, rollbacks marked."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), squeeze=False)
    for ax, (keys, title) in zip(axes.flat, ONLINE_PANELS):
        if not any([_line(ax, rows, k, k.removeprefix("online/")) for k in keys]):
            _missing(ax, keys[0])
        for r in rows:
            if r.get("online/rolled_back"):
                ax.axvline(r.get("step", 0), color="tab:red", alpha=0.4, linestyle="--")
        ax.set(title=title, xlabel="row (round or rollback)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7)
    fig.suptitle(f"{name}: online service (dashed: rollback)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def make_report(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw the PNGs into `out_dir` (default RUN_DIR/plots); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows, summary = load_metrics(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    name = Path(run_dir).resolve().name
    paths = []
    if any("online/version_served" in r for r in rows):
        paths.append(_online(plt, rows, out / "online.png", name))
        plt.close("all")
        return paths

    fig, ax = plt.subplots(figsize=(7, 4))
    if _line(ax, rows, "reward/mean", "reward mean"):
        xs, mean = series(rows, "reward/mean")
        _, std = series(rows, "reward/std")
        if len(std) == len(mean):
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    acc_x, acc_y = eval_series(rows, summary, "eval/accuracy")
    if acc_x:
        ax.plot(acc_x, acc_y, marker="s", color="tab:green", label="held-out accuracy")
    if not ax.lines:
        _missing(ax, "reward/mean or eval/accuracy")
    paths.append(_save(fig, ax, out / "reward_accuracy.png", f"{name}: reward and accuracy"))

    for fname, keys, title in (
        ("kl.png", ("kl/mean", "kl/coef"), "KL to reference"),
        ("entropy.png", ("entropy/mean",), "policy entropy"),
        ("response_length.png", ("response_length/mean", "response_length/clip_ratio"), "response length (tokens)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = [_line(ax, rows, k) for k in keys]
        if not any(drawn):
            _missing(ax, keys[0])
        paths.append(_save(fig, ax, out / fname, f"{name}: {title}"))

    fig, ax = plt.subplots(figsize=(7, 4))
    parts = step_breakdown(rows)
    xs = [r.get("step", i + 1) for i, r in enumerate(rows)]
    if rows and any(any(v) for v in parts.values()):
        ax.stackplot(xs, *[parts[s] for s in STAGES], labels=list(STAGES), alpha=0.85)
        ax.set_ylabel("seconds")
    else:
        _missing(ax, "timing_s/*")
    paths.append(_save(fig, ax, out / "step_time.png", f"{name}: step-time breakdown"))

    drawn = [k for k in TEXT_METRICS if eval_series(rows, summary, k)[0]]
    if drawn:
        fig, axes = plt.subplots(1, len(drawn), figsize=(4 * len(drawn), 3.5), squeeze=False)
        for ax, key in zip(axes[0], drawn):
            ax.plot(*eval_series(rows, summary, key), marker="s", color="tab:purple")
            ax.set(title=f"{name}: {key}", xlabel="step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "eval_metrics.png", dpi=100)
        paths.append(out / "eval_metrics.png")
    plt.close("all")
    return paths
