"""The one place where `ray.remote(...)` and resource options are applied.

Actor bodies (RolloutWorker, RewardScorer, Learner, SFTLearner) are plain classes; this module turns
each into named Ray actors with the resources its config section asks for:

    rollout-0..N-1   RolloutWorker   cfg.rollout.resources   (one vLLM engine each)
    colocated-0..K-1 ColocatedRank   cfg.learner.resources, instead of rollout-* and learner-* when
                     `placement: colocated` (a learner rank and an engine per process, one gang)
    reward-0..M-1    RewardScorer    cfg.reward.resources
    learner-0..K-1   Learner         cfg.learner.resources, gang scheduled in one placement group
                     (SFTLearner on the same processes for `rl-service sft`: make_sft_learners)
    prompt-queue, rollout-queue, scored-queue   RayBatchQueue (no CPU of their own)

A rollout worker, scorer or queue that died is replaced by a new actor of the same name and
options (make_rollout_worker / make_scorer / make_queues); learners are only ever replaced all
together.

Serve (at the end): the plain PolicyServer becomes the `PolicyServer` deployment with its FastAPI
routes as ingress (serve_app), and VersionBoard the small actor replicas follow training through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl_service.config import Config, LearnerConfig, Resources, ServeConfig
from rl_service.infra.env import ACTOR_ENV, engine_env, free_port
from rl_service.infra.queues import RayBatchQueue
from rl_service.testing import faults

T = TypeVar("T")
QUEUE_NAMES = ("prompt-queue", "rollout-queue", "scored-queue")


def actor_options(res: Resources, name: str, max_concurrency: int = 1) -> dict:
    return {
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus,
        "resources": dict(res.custom),
        "name": name,
        "max_concurrency": max_concurrency,
        # Ray derives OMP_NUM_THREADS from num_cpus; keep at least one thread.
        "runtime_env": {
            "env_vars": {
                "OMP_NUM_THREADS": str(max(1, int(res.num_cpus))),
                "OMP_WAIT_POLICY": "PASSIVE",
                # which component a process is, readable from outside (/proc/<pid>/environ):
                # for operators, and for the chaos harness that kills them (testing/chaos.py)
                ACTOR_ENV: name,
                **faults.actor_env(),
            }
        },
    }


def named(create: Callable[[], T], wait_s: float = 30.0) -> T:
    """create() of a named actor, retried while the name is still held by a dead actor of that
    name (a replacement is created right after the old one died)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return create()
        except ValueError as err:
            if "already taken" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def create_named(actor_cls, opts: dict, *args, wait_s: float = 30.0):
    """`actor_cls.options(**opts).remote(*args)`, retried while its name is taken (`named`)."""
    return named(lambda: actor_cls.options(**opts).remote(*args), wait_s)


def make_rollout_worker(cfg: Config, model_path: str, index: int):
    """Rollout worker `rollout-<index>` (also used to replace one that died)."""
    from rl_service.rollout.worker import RolloutWorker

    name = f"rollout-{index}"
    opts = actor_options(cfg.rollout.resources, name, max_concurrency=4)
    # the actor options (OMP threads, PASSIVE wait, fault plan) win over what the driver passes
    opts["runtime_env"]["env_vars"] = {**engine_env(), **opts["runtime_env"]["env_vars"]}
    # Same seed everywhere: sampling is seeded per batch id, so a batch's samples do not depend
    # on which worker happens to take it (exact resume with a different worker count).
    return create_named(ray.remote(RolloutWorker), opts, cfg.rollout, model_path, cfg.seed, name, index + 1)


def make_rollout_workers(cfg: Config, model_path: str) -> list:
    return [make_rollout_worker(cfg, model_path, i) for i in range(cfg.rollout.num_workers)]


def make_scorer(cfg: Config, index: int):
    """Reward scorer `reward-<index>` (also used to replace one that died)."""
    from rl_service.reward.scorer import RewardScorer

    name = f"reward-{index}"
    whole_groups = not cfg.learner.advantage.uses_critic
    return create_named(
        ray.remote(RewardScorer),
        actor_options(cfg.reward.resources, name, max_concurrency=2),
        cfg.reward,
        name,
        whole_groups,
    )


def make_scorers(cfg: Config) -> list:
    return [make_scorer(cfg, i) for i in range(cfg.reward.num_scorers)]


def make_queues(cfg: Config) -> tuple[RayBatchQueue, RayBatchQueue, RayBatchQueue]:
    """The prompt, rollout and scored queues, `cfg.train.queue_size` batches each (also used to
    replace them all after one died)."""
    prompt_q, rollout_q, scored_q = (named(lambda n=n: RayBatchQueue(cfg.train.queue_size, n)) for n in QUEUE_NAMES)
    return prompt_q, rollout_q, scored_q  # unpacked: exactly three


@ray.remote(num_cpus=0)
def _rendezvous_address() -> tuple[str, int]:
    """Runs on learner rank 0's node: its IP and a port free on every interface there (the other
    ranks may sit on other nodes) for torch.distributed's rendezvous."""
    return ray.util.get_node_ip_address(), free_port(host="")


def learner_node_address(pg) -> tuple[str, int]:
    """(IP, free port) on learner rank 0's node: a rendezvous it can serve (weight-sync group)."""
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    return ray.get(_rendezvous_address.options(scheduling_strategy=strategy).remote())


def _learner_actor_class():
    from rl_service.learner.learner import Learner

    class LearnerActor(Learner):
        """Ray adapter: refs nested in a list are not resolved by Ray, so fetch them here."""

        def train_step(self, batches, group_size):
            return super().train_step(ray.get(list(batches)), group_size)

    return LearnerActor


def make_learners(cfg: Config, model_path: str):
    """K PPO learner processes in one placement group (all or nothing). Returns (actors, pg)."""
    lc = cfg.learner
    return _learner_gang(
        lc,
        ray.remote(_learner_actor_class()),
        lambda rank, addr, port: (lc, model_path, rank, lc.num_workers, addr, port, cfg.seed, cfg.model.lora),
    )


def _fetch_refs(refs: list) -> list:
    """The objects behind a list of refs (Ray resolves top-level ref arguments only)."""
    return ray.get(list(refs))


def make_colocated_ranks(cfg: Config, model_path: str):
    """`placement: colocated`: K processes `colocated-<rank>` in one placement group, each a
    learner rank and a rollout engine (ColocatedRank). Returns (actors, pg)."""
    from rl_service.learner.colocated import ColocatedRank

    lc = cfg.learner
    return _learner_gang(
        lc,
        ray.remote(ColocatedRank),
        lambda rank, addr, port: (
            cfg.rollout,
            lc,
            model_path,
            rank,
            lc.num_workers,
            (addr, port),
            cfg.seed,
            _fetch_refs,
            cfg.model.lora,
        ),
        prefix="colocated",
        max_concurrency=4,  # the rollout loop holds one thread; learner and eval calls use others
        env=engine_env(),
    )


def make_sft_learners(cfg: Config, model_path: str):
    """The same K processes (learner.num_workers x learner.resources) running SFTLearner
    (rl_service/sft/learner.py) for `rl-service sft`. Returns (actors, pg)."""
    from rl_service.sft.learner import SFTLearner

    lc = cfg.learner
    return _learner_gang(
        lc,
        ray.remote(SFTLearner),
        lambda rank, addr, port: (lc, cfg.model.sft, model_path, rank, lc.num_workers, addr, port, cfg.seed),
    )


def _learner_gang(
    lc: LearnerConfig,
    actor_cls,
    args_of: Callable[[int, str, int], tuple],
    prefix: str = "learner",
    max_concurrency: int = 1,
    env: dict[str, str] | None = None,
):
    """`<prefix>-<rank>` actors of `actor_cls`, one per bundle of a PACK placement group, created
    with `args_of(rank, rendezvous_addr, rendezvous_port)`; `env` under the actor options' own
    variables. Returns (actors, pg)."""
    bundle = {"CPU": lc.resources.num_cpus, "GPU": lc.resources.num_gpus, **lc.resources.custom}
    bundle = {k: v for k, v in bundle.items() if v}
    pg = placement_group([dict(bundle) for _ in range(lc.num_workers)], strategy="PACK", name="learners")
    ray.get(pg.ready(), timeout=300)
    addr, port = ray.get(
        _rendezvous_address.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        ).remote()
    )
    actors = []
    for rank in range(lc.num_workers):
        opts = actor_options(lc.resources, f"{prefix}-{rank}", max_concurrency)
        opts["runtime_env"]["env_vars"] = {**(env or {}), **opts["runtime_env"]["env_vars"]}
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank)
        actors.append(create_named(actor_cls, opts, *args_of(rank, addr, port)))
    return actors, pg


def release(pg) -> None:
    remove_placement_group(pg)


# ------------------------------------------------------------------------------------------- Serve

OVERLOAD_HEADROOM = 64
"""Requests Serve admits beyond the replica's own limit (per replica, and in its routing queue,
which a burst fills while it assigns requests to replicas), so overload is answered by the app
(OpenAI envelope, microseconds each) and Serve's plain-text 503 only past that outer bound."""


def serve_deployment(server_cls, **options):
    """`server_cls` (PolicyServer or a subclass) as a Serve deployment whose HTTP ingress is its
    routes (serving/routes.py, a fresh FastAPI app per call); `options` as for `serve.deployment`."""
    from ray import serve

    from rl_service.serving.routes import build_api

    return serve.deployment(serve.ingress(build_api(server_cls))(server_cls), **options)


def _env_secret(name: str):
    """$name as a SecretStr (None when unset or empty)."""
    import os

    from pydantic import SecretStr

    return SecretStr(os.environ[name]) if os.environ.get(name) else None


def serve_app(cfg: ServeConfig, model_path: str, board=None):
    """The bound Serve application for `serve.run`: the policy endpoint serving `model_path`,
    following `board` (a VersionBoard actor) when given. Paths are made absolute here because a
    replica's working directory is not the driver's; the API key falls back to $RL_SERVICE_API_KEY."""
    from pathlib import Path

    from rl_service.infra.env import passed_env
    from rl_service.serving.endpoint import PolicyServer

    cfg = cfg.model_copy(
        update={
            "api_key": cfg.api_key or _env_secret("RL_SERVICE_API_KEY"),
            "feedback_db": str(Path(cfg.feedback_db).resolve()),
        }
    )
    scaling = (
        {
            "autoscaling_config": {
                "min_replicas": cfg.min_replicas,
                "max_replicas": cfg.max_replicas,
                "target_ongoing_requests": cfg.target_ongoing_requests,
            }
        }
        if cfg.min_replicas is not None
        else {"num_replicas": cfg.num_replicas}
    )
    # The replica answers overload itself (serving/admission.py); Serve's bounds sit above it.
    deployment = serve_deployment(
        PolicyServer,
        name="PolicyServer",
        max_ongoing_requests=cfg.max_ongoing_requests + cfg.max_queued_requests + OVERLOAD_HEADROOM,
        max_queued_requests=cfg.max_queued_requests + OVERLOAD_HEADROOM,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        **scaling,
    )
    return deployment.bind(cfg.model_dump(), str(Path(model_path).resolve()), passed_env(), board)


def version_board():
    """The VersionBoard actor (serving/follow.py) that Serve replicas poll for new weights."""
    from rl_service.serving.follow import VersionBoard

    return ray.remote(num_cpus=0)(VersionBoard).remote()
