"""The step bar's two halves, each alone on the machine (no Ray, nothing else running):

- engine: one step's generation by rl_service's own RolloutWorker body (the run's engine
  config) given every core, on the step's prompts from the run's stream;
- learner: one learner update (`Learner.train_step`, the run's learner config and layout:
  `learner.num_workers` gloo ranks x 1 thread) on exactly those samples, scored by the run's
  reward (RewardScorer body).

e2e_trl's step bar: a run's step time <= 1.25 x (engine + learner) of the same step alone; the
overhead share is 1 - (engine + learner) / step, so contention between the two counts as overhead.

    .venv/bin/python -m bench.standalone --config YAML --overrides JSON --out result.json
(in its own process: the engine is freed before the learner ranks start.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from bench.common import setup_env


def generate_step(cfg, model: str, calls: int) -> tuple[list[float], list]:
    """Seconds of `calls` step generations (after one untimed warm-up) and the last step's
    ScoredBatches. Each call is the step's prompts_per_step prompts in rollout batches, as the
    run's workers get them, from the run's PromptStream (steps 1, 2, ... of the run)."""
    from rl_service.reward.scorer import RewardScorer
    from rl_service.rollout.worker import RolloutWorker
    from rl_service.tasks import PromptStream, prepare_task
    from rl_service.types import PromptBatch

    rollout = cfg.rollout.model_copy(
        update={"resources": cfg.rollout.resources.model_copy(update={"num_cpus": float(os.cpu_count() or 1)})}
    )
    worker = RolloutWorker(rollout, model, seed=cfg.seed)
    scorer = RewardScorer(cfg.reward, whole_groups=not cfg.learner.advantage.uses_critic)
    stream = PromptStream(prepare_task(cfg.task, model, rollout.max_new_tokens), cfg.seed)
    per_batch, batch_id = rollout.prompts_per_batch, 0
    secs, rolled = [], []
    for call in range(calls + 1):
        batches = []
        for _ in range(cfg.train.prompts_per_step // per_batch):
            batches.append(PromptBatch(batch_id=batch_id, prompts=tuple(stream.next_batch(per_batch))))
            batch_id += 1
        t0 = time.perf_counter()
        rolled = [worker.generate(b) for b in batches]
        if call:  # call 0 warms the engine up
            secs.append(time.perf_counter() - t0)
    scored = [scorer.score(r) for r in rolled]
    del worker
    return secs, scored


def _learner_rank(rank: int, world: int, port: int, threads: int, job: dict, out) -> None:
    import torch

    from rl_service.learner.learner import Learner

    learner = Learner(job["cfg"], job["model"], rank, world, "127.0.0.1", port, seed=0)
    try:
        learner.setup()
        torch.set_num_threads(threads)
        secs, metrics = [], {}
        for _ in range(job["updates"]):
            t0 = time.perf_counter()
            metrics = learner.train_step(job["batches"], job["group"])
            secs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        learner.publish(1, [[1, 5, 6, 7]])
        publish_s = time.perf_counter() - t0
        if rank == 0:
            out.put(
                {
                    "train_step_s": statistics.median(secs[1:] or secs),
                    "all_s": secs,
                    "publish_s": publish_s,
                    "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                }
            )
    finally:
        learner.shutdown()


def time_learner(learner_cfg, model: str, batches: list, group: int, world: int, threads: int, updates: int) -> dict:
    """`updates` learner updates on `batches` in `world` spawned gloo ranks x `threads` threads
    -> {"train_step_s": median after the first, "all_s", "publish_s", "metrics": the last update's}.
    Every update starts from the weights the previous one left (the batch is the same)."""
    import torch.multiprocessing as mp

    from rl_service.infra.env import free_port

    out = mp.get_context("spawn").Queue()
    job = {"cfg": learner_cfg, "model": model, "batches": batches, "group": group, "updates": updates}
    ctx = mp.spawn(_learner_rank, nprocs=world, join=False, args=(world, free_port(), threads, job, out))
    while not ctx.join():
        pass
    return out.get(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--overrides", required=True, help="JSON list of key=value overrides")
    ap.add_argument("--calls", type=int, default=3, help="timed step generations")
    ap.add_argument("--updates", type=int, default=4, help="learner updates (the first is not counted)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    setup_env()
    from rl_service.config import load_config

    cfg = load_config(args.config, json.loads(args.overrides))
    model = cfg.model.path
    gen_s, scored = generate_step(cfg, model, args.calls)
    learner = time_learner(
        cfg.learner, model, scored, cfg.rollout.samples_per_prompt, cfg.learner.num_workers, 1, args.updates
    )
    samples = [s for b in scored for s in b.samples]
    result = {
        "generate_s": statistics.median(gen_s),
        "generate_calls_s": gen_s,
        "learner_s": learner["train_step_s"],
        "learner_calls_s": learner["all_s"],
        "learner_metrics": learner["metrics"],
        "completion_tokens": sum(len(s.response_ids) for s in samples),
        "samples": len(samples),
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    print(f"[standalone] generate {result['generate_s']:.2f}s  learner {result['learner_s']:.2f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
