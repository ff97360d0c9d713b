"""`rl-service train-rm` and `rl-service train-dpo`: learning from preference pairs.

    rl-service train-rm  CONFIG [key=value ...] [--data prefs.jsonl [--eval-data held.jsonl] | --feedback-db PATH]
    rl-service train-dpo CONFIG [key=value ...] [same data flags]

Data: `--data` is JSONL of {prompt, chosen, rejected} (e.g. from `rl-service feedback
export`); `--feedback-db` reads the serving feedback database directly. Without
`--eval-data`, preference.eval_fraction of the prompts is held out by prompt hash. With
neither flag, the synthetic addition preference task (rl_service/tasks/preferences.py).
Outputs in <run_root>/<name>/: model/ (HF dir), metrics.jsonl, summary.json, config.yaml.
Also runnable as `rl-service train-rm configs/rm.yaml`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rl_service.config import ConfigError, PreferenceRunConfig, read_config_data, validate


def load_preference_config(path: str | Path | None, overrides: list[str] | None = None) -> PreferenceRunConfig:
    """YAML + dotted overrides -> PreferenceRunConfig (ConfigError naming the key on a problem)."""
    return validate(PreferenceRunConfig, read_config_data(path, overrides))


def load_pairs(
    cfg: PreferenceRunConfig, data: str | None = None, eval_data: str | None = None, feedback_db: str | None = None
) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out pairs) from the flags, or the synthetic task."""
    from rl_service.preference.data import read_jsonl, split_by_prompt, synthetic_preferences

    pc = cfg.preference
    if data and feedback_db:
        raise ConfigError("give --data or --feedback-db, not both")
    if feedback_db:
        if not Path(feedback_db).is_file():
            raise ConfigError(f"--feedback-db: {feedback_db!r} not found")
        from rl_service.serving.feedback import FeedbackStore

        store = FeedbackStore(feedback_db)
        try:
            pairs = store.preference_pairs()
        finally:
            store.close()
    elif data:
        if not Path(data).is_file():
            raise ConfigError(f"--data: {data!r} not found")
        pairs = read_jsonl(data)
    else:
        if eval_data:
            raise ConfigError("--eval-data needs --data")
        return synthetic_preferences(cfg.task, pc.num_train_pairs, cfg.seed)
    if eval_data:
        return pairs, read_jsonl(eval_data)
    train, held_out = split_by_prompt(pairs, pc.eval_fraction, cfg.seed)
    if not train or not held_out:
        raise ConfigError(
            f"{len(pairs)} pairs split into {len(train)} train / {len(held_out)} held-out: "
            "need both (more data, another preference.eval_fraction, or --eval-data)"
        )
    return train, held_out


def _run(kind: str, args) -> int:
    cfg = load_preference_config(args.config, args.overrides)  # bad config: exit 2 before anything heavy
    train_pairs, eval_pairs = load_pairs(cfg, args.data, args.eval_data, args.feedback_db)
    from rl_service.config import dump_config
    from rl_service.models.build import ensure_model
    from rl_service.preference.train import train_preferences

    model_path = ensure_model(cfg.model, cfg.task, cfg.seed)
    out = Path(cfg.run_root) / cfg.name
    if out.exists():  # keep a previous run's outputs: move them aside, never delete
        import time

        out.rename(out.with_name(f"{cfg.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}"))
    out.mkdir(parents=True)
    dump_config(cfg, out / "config.yaml")
    print(
        f"[{kind}] {len(train_pairs)} train / {len(eval_pairs)} held-out pairs; start from {model_path}; "
        f"{cfg.preference.num_workers} process(es)",
        flush=True,
    )
    s = train_preferences(kind, cfg, str(model_path), train_pairs, eval_pairs, out)
    line = f"held-out pairwise accuracy {s['eval/accuracy_start']:.3f} -> {s['eval/accuracy_end']:.3f}"
    if kind == "dpo":
        line += (
            f"; policy logp(chosen) > logp(rejected): {s['eval/logp_accuracy_start']:.3f} -> "
            f"{s['eval/logp_accuracy_end']:.3f}; greedy exact match {s['task/exact_match_start']:.3f} -> "
            f"{s['task/exact_match_end']:.3f}"
        )
    print(f"{line} in {s['steps']} steps, {s['train_s']:.0f} s\nmodel: {s['model_dir']}")
    return 0


def cmd_train_rm(args) -> int:
    return _run("rm", args)


def cmd_train_dpo(args) -> int:
    return _run("dpo", args)


def register(subparsers) -> None:
    for name, fn, helptext in (
        ("train-rm", cmd_train_rm, "train a reward model (Bradley-Terry) from preference pairs"),
        ("train-dpo", cmd_train_dpo, "train the policy with DPO from preference pairs"),
    ):
        sp = subparsers.add_parser(name, help=helptext)
        sp.add_argument("config", help="YAML, e.g. configs/rm.yaml")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. preference.lr=1e-4")
        sp.add_argument("--data", default=None, help="JSONL of {prompt, chosen, rejected}")
        sp.add_argument("--eval-data", default=None, help="held-out JSONL (default: split --data by prompt)")
        sp.add_argument("--feedback-db", default=None, help="SQLite feedback database of `rl-service serve`")
        sp.set_defaults(fn=fn)


def main(argv: list[str] | None = None) -> int:
    """`python -m` entry: the main `rl-service` CLI, which registers these commands too."""
    from rl_service.cli.main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
