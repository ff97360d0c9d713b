"""`rl-service` command line.

    rl-service train CONFIG [key=value ...] [--resume auto|PATH]
                                                train (embedded local Ray, or $RAY_ADDRESS); --resume auto
                                                continues runs/<name> from its latest checkpoint (a fresh
                                                run if it has none), PATH names a checkpoint or run dir;
                                                crashed workers/scorers/queues are replaced and a crashed
                                                learner restarts from the last checkpoint in the same call
                                                (train.max_restarts, docs/reliability.md)
    rl-service build-model CONFIG [key=value]   build/warm-start the small model only

Exit codes: 0 success, 1 the run failed, 2 bad usage or config (one line naming the problem,
printed before Ray starts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from rl_service.config import ConfigError, dump_config, load_config
from rl_service.controller.checkpoint import CheckpointError


def _fail(code: int, msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _project_env() -> None:
    """Keep caches inside the working directory and never reach for a model hub."""
    cwd = Path.cwd()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cwd / ".cache" / "vllm"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Spinning OpenMP threads stall for seconds when other processes share the cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _prepare_run_dir(cfg, keep: bool = False) -> Path:
    """`keep`: resuming into this run dir, so its outputs are continued, not moved aside."""
    run_dir = Path(cfg.run_root) / cfg.name
    if keep and run_dir.is_dir():
        dump_config(cfg, run_dir / "config.yaml")
        return run_dir
    if run_dir.exists():  # keep the previous run's outputs: move them aside, never delete
        run_dir.rename(run_dir.with_name(f"{cfg.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}"))
    run_dir.mkdir(parents=True)
    dump_config(cfg, run_dir / "config.yaml")
    return run_dir


def cmd_build_model(args) -> int:
    from rl_service.models.build import ensure_model, load_build_info

    cfg = load_config(args.config, args.overrides)
    path = ensure_model(cfg.model, cfg.task, cfg.seed)
    print(json.dumps({"model_path": str(path), **(load_build_info(path) or {})}, indent=2))
    return 0


def cmd_train(args) -> int:
    cfg = load_config(args.config, args.overrides)  # ConfigError -> exit 2, before anything heavy
    from rl_service.controller.checkpoint import resolve_resume
    from rl_service.controller.loop import train
    from rl_service.infra.session import ray_session
    from rl_service.models.build import ensure_model, load_build_info

    run_dir = Path(cfg.run_root) / cfg.name
    resume_from = resolve_resume(args.resume, run_dir) if args.resume else None
    keep = resume_from is not None and run_dir.resolve() in resume_from.resolve().parents
    run_dir = _prepare_run_dir(cfg, keep=keep)
    if resume_from is not None:
        print(f"resuming from {resume_from}")
    model_path = ensure_model(cfg.model, cfg.task, cfg.seed)
    info = load_build_info(model_path) or {}
    print(
        f"policy: {model_path} ({info.get('num_params', '?')} params, "
        f"warm-start accuracy {info.get('base_accuracy', 'n/a')})"
    )
    with ray_session(cfg):
        summary = train(cfg, run_dir, str(model_path), resume_from=resume_from)
    print(
        f"\nheld-out exact match: {summary['eval/accuracy_start']:.3f} -> {summary['eval/accuracy_end']:.3f} "
        f"({100 * summary['eval/accuracy_gain']:+.1f} points) in {summary['steps']} steps, "
        f"{summary['wall_s']:.0f} s"
    )
    print(
        f"samples: trained {summary['samples/trained']}, dropped stale {summary['samples/dropped_stale']}, "
        f"dropped invalid {summary['samples/dropped_invalid']}, lost {summary['samples/lost']}"
    )
    restarts = {k.split("_", 1)[1]: int(v) for k, v in summary.items() if k.startswith("faults/restarts_") and v}
    if restarts:
        print(
            f"survived component failures (restarts): {restarts}; "
            f"{int(summary['faults/batches_regenerated'])} batches regenerated, "
            f"{summary['faults/recover_s']:.0f} s spent recovering"
        )
    print(f"outputs: {run_dir}/ (metrics.jsonl, summary.json, final/)")
    return 0


# Modules that add their own subcommands: each has `register(subparsers)` and sets
# `fn=handler(args) -> exit code` on its parsers. Keeps this file short as commands grow.
COMMAND_MODULES: list[str] = ["rl_service.cli.cluster", "rl_service.cli.serve", "rl_service.cli.preference"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="rl-service", description="Distributed RL post-training on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (
        ("train", cmd_train, "train a policy with PPO"),
        ("build-model", cmd_build_model, "build and warm-start the small model"),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("config", help="experiment YAML, e.g. configs/quickstart.yaml")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-5")
        if name == "train":
            sp.add_argument(
                "--resume",
                metavar="auto|PATH",
                default=None,
                help="continue from the run dir's latest checkpoint (auto) or from PATH",
            )
        sp.set_defaults(fn=fn)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage line
        return int(exc.code or 0)
    _project_env()
    try:
        return args.fn(args)
    except (ConfigError, CheckpointError) as err:
        return _fail(2, str(err))
    except KeyboardInterrupt:
        return _fail(1, "interrupted")
    except Exception as err:  # noqa: BLE001 - one line first, details after
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: run failed: {type(err).__name__}: {first}", file=sys.stderr)
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
