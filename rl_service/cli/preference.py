"""`rl-service train-rm` and `rl-service train-dpo`: learning from preference pairs.

    rl-service train-rm  CONFIG [key=value ...] [--data prefs.jsonl [--eval-data held.jsonl] | --feedback-db PATH]
    rl-service train-dpo CONFIG [key=value ...] [same data flags]

Data (rl_service/preference/data.py `load_pairs`): `--data` is JSONL of {prompt, chosen, rejected}
(e.g. from `rl-service feedback export`); `--feedback-db` reads the serving feedback database
directly. Without `--eval-data`, preference.eval_fraction of the prompts is held out by prompt
hash. With neither flag, the synthetic addition preference task. Outputs in <run_root>/<name>/:
model/ (HF dir), metrics.jsonl, summary.json, config.yaml.
"""

from __future__ import annotations

from rl_service.config import load_preference_config
from rl_service.preference.data import load_pairs
from rl_service.preference.noise import apply_noise_handling


def _run(kind: str, args) -> int:
    # bad config or data flags: exit 2 before anything heavy
    cfg = load_preference_config(args.config, args.overrides, kind=kind)
    train_pairs, eval_pairs = load_pairs(cfg, args.data, args.eval_data, args.feedback_db)
    pc = cfg.preference
    train_pairs, found = apply_noise_handling(train_pairs, pc.noise, pc.label_smoothing)
    if found is not None:
        shown = ", ".join(f"{a or '(none)'} {acc:.3f}" for a, acc in found["annotators"].items())
        print(
            f"[{kind}] noise=annotators: {found['rows']} labels -> {found['items']} pairs "
            f"({found['contested']} contested, {found['flipped']} against their majority); "
            f"annotator accuracy: {shown}",
            flush=True,
        )
    from rl_service.controller.run_dir import prepare_run_dir
    from rl_service.models.build import ensure_model
    from rl_service.preference.train import train_preferences

    model_path = ensure_model(cfg.model, cfg.task, cfg.seed)
    out = prepare_run_dir(cfg)
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
