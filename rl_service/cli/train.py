"""`rl-service train` and `rl-service build-model`.

rl-service train CONFIG [key=value ...] [--resume auto|PATH]
    train (embedded local Ray, or $RAY_ADDRESS); --resume auto continues runs/<name> from its
    latest checkpoint (a fresh run if it has none), PATH names a checkpoint or run dir; crashed
    workers/scorers/queues are replaced and a crashed learner restarts from the last checkpoint
    in the same call (train.max_restarts, docs/reliability.md)
rl-service build-model CONFIG [key=value ...]
    build/warm-start the small model only
"""

from __future__ import annotations

import json

from rl_service.config import load_config


def cmd_train(args) -> int:
    cfg = load_config(args.config, args.overrides)  # ConfigError -> exit 2, before anything heavy
    from rl_service.controller.evaluate import prepare_text_eval
    from rl_service.controller.loop import train
    from rl_service.controller.run_dir import open_run_dir, summary_lines
    from rl_service.infra.session import ray_session
    from rl_service.models.build import ensure_model, load_build_info
    from rl_service.tasks import bind_task, make_task

    task = make_task(cfg.task)  # a dataset task reads and checks its rows: DataError -> exit 2
    model_path = ensure_model(cfg.model, cfg.task, cfg.seed)
    bind_task(task, str(model_path), cfg.rollout.max_new_tokens)  # tokenized; DataError -> exit 2
    _check_lora_sync(cfg, model_path)
    text_eval = prepare_text_eval(cfg, task, str(model_path))  # eval.metrics' inputs: DataError -> exit 2
    run_dir, resume_from = open_run_dir(cfg, args.resume)  # only now is an older run dir moved aside
    if resume_from is not None:
        print(f"resuming from {resume_from}")
    info = load_build_info(model_path) or {}
    print(
        f"policy: {model_path} ({info.get('num_params', '?')} params, "
        f"warm-start accuracy {info.get('base_accuracy', 'n/a')})"
    )
    if hasattr(task, "summary"):
        print("data: " + ", ".join(f"{k.removeprefix('data/')} {v}" for k, v in task.summary().items()))
    with ray_session(cfg):
        summary = train(cfg, run_dir, str(model_path), resume_from=resume_from, task=task, text_eval=text_eval)
    print("\n".join(summary_lines(summary, run_dir)))
    return 0


def _check_lora_sync(cfg, model_path) -> None:
    """model.lora.sync=adapters on an engine or architecture that cannot serve them: exit 2 now."""
    from rl_service.config import ConfigError
    from rl_service.rollout.adapters import resolve

    try:
        resolve(cfg, model_path)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def cmd_build_model(args) -> int:
    from rl_service.models.build import ensure_model, load_build_info

    cfg = load_config(args.config, args.overrides)
    path = ensure_model(cfg.model, cfg.task, cfg.seed)
    print(json.dumps({"model_path": str(path), **(load_build_info(path) or {})}, indent=2))
    return 0


def register(subparsers) -> None:
    sp = subparsers.add_parser("train", help="train a policy with PPO")
    _config_args(sp)
    sp.add_argument(
        "--resume",
        metavar="auto|PATH",
        default=None,
        help="continue from the run dir's latest checkpoint (auto) or from PATH",
    )
    sp.set_defaults(fn=cmd_train)
    sp = subparsers.add_parser("build-model", help="build and warm-start the small model")
    _config_args(sp)
    sp.set_defaults(fn=cmd_build_model)


def _config_args(sp) -> None:
    sp.add_argument("config", help="experiment YAML, e.g. configs/quickstart.yaml")
    sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-5")
