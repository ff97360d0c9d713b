"""`rl-service serve` and `rl-service feedback export`.

    rl-service serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--config YAML]
    rl-service feedback export --out prefs.jsonl [--db PATH] [--config YAML]

`serve` starts an embedded Ray bound to 127.0.0.1 (or attaches to `ray.address`), deploys
the OpenAI-compatible app for the saved policy, prints its URL and stays up until SIGINT
or SIGTERM, then shuts Serve and Ray down. `--config` is an experiment YAML: its `serve:`
and `ray:` sections are used. Flags override the file. Also runnable without the main CLI:
`python -m rl_service.cli serve ...`.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from pydantic import ValidationError

from rl_service.config import ConfigError, ServeConfig, load_config
from rl_service.config.serve import secret


def _config(args):
    cfg = load_config(args.config)
    updates = {
        k: v
        for k, v in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("api_key", getattr(args, "api_key", None)),
        )
        if v is not None
    }
    if updates:
        try:
            cfg.serve = ServeConfig.model_validate({**cfg.serve.model_dump(), **updates})
        except ValidationError as err:
            e = err.errors()[0]
            if not e["loc"]:  # a check across fields (a public host without a key)
                raise ConfigError(e["msg"].removeprefix("Value error, ")) from None
            raise ConfigError(f"--{e['loc'][0]}: {e['msg']} (got {e.get('input')!r})") from None
    return cfg


def cmd_serve(args) -> int:
    cfg = _config(args)
    ckpt = Path(args.checkpoint)
    if not (ckpt / "config.json").is_file():
        raise ConfigError(
            f"--checkpoint: {str(ckpt)!r} is not an HF model directory (no config.json); "
            "pass a run's final/ directory or a saved policy"
        )
    if (ckpt / "ilql_heads.safetensors").is_file() and cfg.serve.engine.name != "hf":
        raise ConfigError(
            f"--checkpoint: {str(ckpt)!r} is a train-ilql model (ILQL heads shift its logits), which only "
            f"serve.engine hf decodes; got {cfg.serve.engine.name!r} (set serve.engine: hf in --config)"
        )
    from ray import serve

    from rl_service.infra.placement import serve_app
    from rl_service.infra.session import ray_session

    stop = threading.Event()
    sc = cfg.serve
    with ray_session(cfg):
        # After ray.init: Ray installs its own SIGTERM handler (it aborts the process).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        serve.start(http_options={"host": sc.host, "port": sc.port})
        try:
            serve.run(serve_app(sc, str(ckpt)), name="policy", route_prefix="/")
            auth = "bearer key required" if (sc.api_key or _env_key()) else "no auth"
            print(
                f"serving {ckpt} as {sc.model_name!r} at http://{sc.host}:{sc.port}/v1 ({auth}); Ctrl-C to stop",
                flush=True,
            )
            while not stop.wait(0.5):
                pass
            print("stopping", flush=True)
        finally:
            serve.shutdown()
    return 0


def _env_key() -> str | None:
    import os

    return os.environ.get("RL_SERVICE_API_KEY")


def cmd_feedback_export(args) -> int:
    from rl_service.serving.feedback import FeedbackStore, export_preferences

    sc = _config(args).serve
    db = args.db or sc.feedback_db
    if sc.feedback_dsn is None and not Path(db).is_file():
        raise ConfigError(f"--db: no feedback database at {db!r}")
    store = FeedbackStore(db, None if args.db else secret(sc.feedback_dsn))
    try:
        count = export_preferences(store, args.out)
    finally:
        store.close()
    print(f"wrote {count} preference pairs to {args.out}")
    return 0


def register(subparsers) -> None:
    sp = subparsers.add_parser("serve", help="serve a saved policy over an OpenAI-compatible API")
    sp.add_argument("--checkpoint", required=True, help="HF model directory, e.g. runs/<name>/final")
    sp.add_argument("--host", default=None, help="bind address (default serve.host = 127.0.0.1)")
    sp.add_argument("--port", type=int, default=None, help="HTTP port (default serve.port = 8000)")
    sp.add_argument("--api-key", default=None, help="bearer key clients must send (or $RL_SERVICE_API_KEY)")
    sp.add_argument("--config", default=None, help="experiment YAML whose serve:/ray: sections apply")
    sp.set_defaults(fn=cmd_serve)

    fp = subparsers.add_parser("feedback", help="human feedback collected by the endpoint")
    fsub = fp.add_subparsers(dest="feedback_command", required=True)
    ep = fsub.add_parser("export", help="write {prompt, chosen, rejected} JSON lines for reward-model training")
    ep.add_argument("--out", required=True, help="output .jsonl path")
    ep.add_argument("--db", default=None, help="SQLite file (default serve.feedback_db)")
    ep.add_argument("--config", default=None, help="experiment YAML whose serve: section applies")
    ep.set_defaults(fn=cmd_feedback_export)
