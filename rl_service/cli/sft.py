"""`rl-service sft`.

rl-service sft CONFIG [key=value ...]
    supervised fine-tuning on a dataset task's rows (prompt + task.response_key, or messages
    ending in an assistant turn; loss on the response tokens only) on the learner processes
    (learner.num_workers x learner.resources) of the embedded local Ray, or $RAY_ADDRESS.
    Settings from model.sft (max_steps, batch_size, lr, eval_every, target_accuracy: stop once
    the eval accuracy, scored with the run's reward, reaches it). Writes runs/<name>/final, an HF
    directory for `model.path` (rl-service train ... model.path=runs/<name>/final), with
    metrics.jsonl and summary.json beside it.
"""

from __future__ import annotations

from rl_service.config import ConfigError, load_config


def cmd_sft(args) -> int:
    cfg = load_config(args.config, args.overrides)  # ConfigError -> exit 2, before anything heavy
    if cfg.task.name != "dataset":
        raise ConfigError(f"rl-service sft trains on a dataset task (task.name: dataset), not {cfg.task.name!r}")
    from rl_service.controller.run_dir import open_run_dir
    from rl_service.infra.session import ray_session
    from rl_service.models.build import ensure_model
    from rl_service.models.hf_config import context_length
    from rl_service.sft.batches import fit_context
    from rl_service.sft.loop import run_sft
    from rl_service.tasks import bind_task, make_task
    from rl_service.tasks.data_files import DataError

    task = make_task(cfg.task)  # reads and checks every row: DataError -> exit 2
    model_path = ensure_model(cfg.model, cfg.task, cfg.seed)  # model.path, or a random-init tiny model
    bind_task(task, str(model_path), cfg.rollout.max_new_tokens)
    context = context_length(model_path)
    examples, too_long = fit_context(task.sft_examples(), context)  # a row without a response: DataError
    if not examples:
        raise DataError(
            f"{cfg.task.train}: every SFT row (prompt + response) is longer than the model's {context} tokens"
        )
    run_dir, _ = open_run_dir(cfg)  # only now is an older run dir moved aside
    print(f"policy: {model_path}; sft on {len(examples)} rows ({too_long} dropped: longer than {context} tokens)")
    with ray_session(cfg):
        summary = run_sft(cfg, run_dir, str(model_path), examples, task, {"data/dropped_long_sft": too_long})
    print(
        f"\nheld-out accuracy: {summary['eval/accuracy_start']:.3f} -> {summary['eval/accuracy_end']:.3f} "
        f"({100 * summary['eval/accuracy_gain']:+.1f} points) in {summary['steps']} SFT steps, "
        f"{summary['wall_s']:.0f} s (stopped: {summary['stopped']})"
    )
    print(f"outputs: {run_dir}/ (metrics.jsonl, summary.json, final/: use it as model.path)")
    return 0


def register(subparsers) -> None:
    sp = subparsers.add_parser(
        "sft",
        help="supervised fine-tuning on a dataset task (warm start before RL)",
        description="Fine-tune model.path (or the built tiny model) on the prompt/response rows of a dataset "
        "task, on the learner processes; writes runs/<name>/final for model.path.",
    )
    sp.add_argument("config", help="experiment YAML with task.name: dataset")
    sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.sft.max_steps=200")
    sp.set_defaults(fn=cmd_sft)
