"""`rl-service online`: serve the policy and keep training it on its users' feedback.

    rl-service online CONFIG [key=value ...]          run the service (until SIGINT / SIGTERM);
                                                      rerun the same command after a crash to resume
    rl-service online CONFIG --status                 versions, what is served, the reward model
    rl-service online CONFIG --pin V | --unpin        serve V and run no rounds / resume rounds
    rl-service online CONFIG --rollback [V]           serve V (default: the version served before)

The operator flags address the service of that config (its run dir, `<run_root>/<name>/`): the
request is queued in online/operator.jsonl and this command waits for the running service to
apply it (or says it is queued when none runs). The loop itself: rl_service/online/service.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from rl_service.config import ConfigError

WAIT_S = 120.0
"""How long an operator request waits for the running service to apply it."""


def _run_dir(cfg) -> Path:
    return Path(cfg.run_root) / cfg.name


def _running_pid(run_dir: Path) -> int | None:
    path = run_dir / "online" / "service.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def cmd_online(args) -> int:
    from rl_service.config.loading import load_online_config

    cfg = load_online_config(args.config, args.overrides)  # ConfigError -> exit 2 before Ray
    run_dir = _run_dir(cfg)
    if args.status:
        return _status(run_dir)
    if args.pin is not None or args.unpin or args.rollback is not None:
        return _operator(run_dir, args)
    return _serve(cfg, run_dir)


def _serve(cfg, run_dir: Path) -> int:
    pid = _running_pid(run_dir)
    if pid is not None and pid != os.getpid():
        raise ConfigError(f"{run_dir}: an online service (pid {pid}) already runs there")
    from rl_service.infra.session import ray_session
    from rl_service.models.build import ensure_model
    from rl_service.online.service import OnlineService
    from rl_service.testing import faults

    model_path = ensure_model(cfg.model, cfg.task, cfg.seed)
    (run_dir / "online").mkdir(parents=True, exist_ok=True)
    (run_dir / "online" / "service.pid").write_text(f"{os.getpid()}\n")
    faults.arm(run_dir)
    stop = threading.Event()
    with ray_session(cfg):
        for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init: Ray installs its own
            signal.signal(sig, lambda *_: stop.set())
        service = OnlineService(cfg, run_dir, str(model_path), log=lambda m: print(m, flush=True))
        try:
            service.start()
            st = service.state
            print(
                f"online: serving v{st.serving} as {cfg.serve.model_name!r} at {service.url}/v1 "
                f"({'resumed' if service.resumed else 'new'}: {len(st.versions)} version(s), "
                f"{st.rounds} round(s), feedback position {st.watermark}); Ctrl-C to stop",
                flush=True,
            )
            service.run(stop)
            print("stopping", flush=True)
        finally:
            service.stop()
    return 0


def _state(run_dir: Path):
    from rl_service.online.state import OnlineState

    path = run_dir / "online" / "state.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no online service state (run `rl-service online CONFIG` first)")
    return OnlineState.load(path)


def _status(run_dir: Path) -> int:
    st = _state(run_dir)
    out = {
        "serving": st.serving,
        "pinned": st.pinned,
        "running_pid": _running_pid(run_dir),
        "rounds": st.rounds,
        "feedback_position": st.watermark,
        "rollbacks": st.rollbacks,
        "reward_model": {"dir": st.rm.dir, "accuracy": st.rm.accuracy, "refits": st.rm.refits},
        "versions": {
            v: {k: r.get(k) for k in ("status", "parent", "canary_checked", "canary_live", "kl_max") if k in r}
            for v, r in st.versions.items()
        },
    }
    print(json.dumps(out, indent=2))
    return 0


def _operator(run_dir: Path, args) -> int:
    st = _state(run_dir)
    op, version = ("pin", args.pin) if args.pin is not None else ("unpin", None) if args.unpin else ("rollback", None)
    if op == "rollback" and args.rollback >= 0:
        version = args.rollback
    from rl_service.online import operator

    why = operator.refusal(st, version)  # the service checks again; a typo is refused here, at once
    if why is not None:
        raise ConfigError(why)
    rid = operator.append(run_dir / "online", op, version)
    if _running_pid(run_dir) is None:
        print(f"queued {op} (no service runs in {run_dir}: applied when it starts)")
        return 0
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result = _state(run_dir).operator_results.get(rid)
        if result is not None:
            print(result)
            return 2 if result.startswith("error:") else 0
        time.sleep(0.5)
    print(f"queued {op}: the service has not applied it within {WAIT_S:.0f} s (see its log)")
    return 0


def register(subparsers) -> None:
    sp = subparsers.add_parser("online", help="serve the policy and keep training it on user feedback")
    sp.add_argument("config", help="YAML, e.g. configs/online.yaml")
    sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. online.rm_every=32")
    ops = sp.add_mutually_exclusive_group()
    ops.add_argument("--status", action="store_true", help="print the service's versions and state")
    ops.add_argument("--pin", type=int, default=None, metavar="V", help="serve version V, run no rounds")
    ops.add_argument("--unpin", action="store_true", help="resume rounds after --pin")
    ops.add_argument(
        "--rollback", type=int, nargs="?", const=-1, default=None, metavar="V",
        help="serve version V (default: the one served before the current)",
    )  # fmt: skip
    sp.set_defaults(fn=cmd_online)
