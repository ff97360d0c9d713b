"""`rl-service train-ilql`: offline ILQL from logged (prompt, completion, reward) rows.

    rl-service train-ilql CONFIG [key=value ...] [--data rows.jsonl | --feedback-db PATH]

Data: `--data` JSON lines {prompt, completion, reward}; `--feedback-db` the serving feedback store's
rated completions (reward = mean rating); neither: the behaviour policy (the config's model,
sampling at ilql.behaviour_temperature) answers ilql.behaviour_prompts task prompts, scored by
`reward:` (written to <run dir>/data.jsonl). Outputs in <run_root>/<name>/: model/ (the policy's
HF directory + ilql_heads.safetensors + ilql.json; `rl-service serve --checkpoint .../model
--config` with serve.engine hf decodes with ILQL), metrics.jsonl, summary.json.
"""

from __future__ import annotations

import json


def cmd_train_ilql(args) -> int:
    from rl_service.config import ConfigError
    from rl_service.config.loading import load_ilql_config

    cfg = load_ilql_config(args.config, args.overrides)  # exit 2 before anything heavy
    if args.data and args.feedback_db:
        raise ConfigError("give --data or --feedback-db, not both")
    from rl_service.controller.run_dir import prepare_run_dir
    from rl_service.ilql import data
    from rl_service.ilql.train import train_ilql
    from rl_service.models.build import ensure_model

    rows = (
        data.file_rows(args.data) if args.data else data.feedback_rows(args.feedback_db) if args.feedback_db else None
    )
    model_path = str(ensure_model(cfg.model, cfg.task, cfg.seed))
    out = prepare_run_dir(cfg)
    if rows is None:
        rows = data.behaviour_rows(cfg, model_path)
        (out / "data.jsonl").write_text(
            "".join(json.dumps({k: r[k] for k in ("prompt", "completion", "reward")}) + "\n" for r in rows)
        )
        print(f"[ilql] behaviour data: {len(rows)} completions of {model_path} -> {out / 'data.jsonl'}", flush=True)
    s = train_ilql(cfg, model_path, rows, out, log=lambda m: print(m, flush=True))
    b = s["by_beta"][str(float(cfg.ilql.beta))]["sampled"]
    print(
        f"held-out reward (sampled) at beta {cfg.ilql.beta}: {b['mean']:.3f} vs behaviour "
        f"{s['by_beta']['0.0']['sampled']['mean']:.3f} "
        f"({b['minus_behaviour']:+.3f} ± {b['minus_behaviour_se']:.3f} SE, "
        f"{s['held_out_prompts']} prompts); {s['steps']} steps, {s['train_s']:.0f} s\nmodel: {s['model_dir']}"
    )
    return 0


def register(subparsers) -> None:
    sp = subparsers.add_parser("train-ilql", help="offline ILQL (Q/V heads, shifted decoding) from logged rewards")
    sp.add_argument("config", help="YAML, e.g. configs/ilql.yaml")
    sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ilql.beta=2")
    sp.add_argument("--data", default=None, help="JSONL of {prompt, completion, reward}")
    sp.add_argument("--feedback-db", default=None, help="SQLite feedback database of `rl-service serve` (ratings)")
    sp.set_defaults(fn=cmd_train_ilql)
