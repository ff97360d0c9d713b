"""The controller: wires the components and runs the training loop.

    PromptStream ─ PromptBatch ─▶ [prompt_q] ─▶ RolloutWorker × N  (vLLM engine, n samples/prompt,
         ▲                                          │               tagged sample_id + policy_version)
         │ issue ≤ (1 + max_policy_lag) steps        ▼
         │ of prompts ahead               [rollout_q] ─▶ RewardScorer × M  (verifier / user fn)
         │                                                  │
    controller ◀──── (ScoredBatch ref, BatchSummary) ── [scored_q]
         │  drop stale (version < current - lag), ledger by sample id
         ▼
    Learner × K (FSDP2) ── train_step(refs) ── publish(version+1) ──▶ load_weights on every worker
                                                 (state dict via object store; checksum + probe verified)

Every queue is bounded (backpressure) and carries refs to whole batches. With lag 0 the
workers only ever see prompts issued after the last sync (strictly on-policy); with lag k
they generate up to k versions ahead while the learner trains.

Checkpoints (rl_service/controller/checkpoint.py) are taken at step boundaries, after the next step's
prompts were issued: they hold the learner state and everything the driver owns (data
position, next batch id, policy version, the ledger and the PromptBatches still in flight).
A resumed run reloads the learners, syncs the restored policy to the workers and re-puts the
in-flight batches under their original batch ids, so with lag 0 it samples and trains
exactly what the uninterrupted run would have (batches are trained in batch-id order).
Guards halt the run with a checkpoint: train.max_nan_steps skipped steps in a row, or a
minibatch KL above learner.kl_hard_limit.

Crashes (docs/reliability.md): a dead rollout worker, reward scorer or queue is replaced in
place (pipeline.py: Components.recover) and every batch in `pending` (issued, not trained) is put again;
a copy that arrives twice is dropped by batch id. A dead learner process ends the attempt:
everything is torn down and the run resumes from its last checkpoint in the same call, up to
train.max_restarts times. Both are counted (`faults/*` metrics, summary.json).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from rl_service.config import Config
from rl_service.controller import checkpoint
from rl_service.controller.ledger import SampleLedger
from rl_service.controller.pipeline import BatchPipeline, batch_from_json
from rl_service.infra.components import Components, LearnerFailure, evaluate, probe_sequences
from rl_service.tasks import PromptStream, make_task
from rl_service.testing import faults
from rl_service.testing.faults import FaultLog
from rl_service.tracking.run import RunTracker

# Fault injection for tests (rl_service/testing/faults.py), e.g. "kill_in_checkpoint:<step>" SIGKILLs
# this driver after the learners wrote that step's shards, before the checkpoint is committed.
FAULT_ENV = faults.FAULT_ENV
# Config keys that must match between a checkpoint and the run resuming from it.
_MUST_MATCH = ("seed", "task", "rollout.samples_per_prompt", "rollout.prompts_per_batch", "train.prompts_per_step")


class TrainingHalted(RuntimeError):
    """A health guard stopped the run; a checkpoint of the state at the halt was written."""


def _pick(cfg_dump: dict, key: str):
    for part in key.split("."):
        cfg_dump = cfg_dump[part]
    return cfg_dump


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows a crashed run logged after its last checkpoint (they will be redone)."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(r + "\n" for r in rows if json.loads(r).get("step", 0) <= last_step))


def train(cfg: Config, run_dir: Path, model_path: str, resume_from: Path | None = None) -> dict:
    """Run PPO updates up to `cfg.train.steps`; returns the summary (also written to summary.json).

    resume_from: a complete checkpoint dir; the run continues from its step exactly.
    A learner failure restarts the run from its latest checkpoint (or from the start if it has
    none yet), at most train.max_restarts times; the summary counts the restarts."""
    if os.environ.get(faults.FAULT_ENV):  # fired-fault markers live with the run (once per run)
        os.environ[faults.MARKER_ENV] = str(run_dir / "faults")
    flog, restarted_from = FaultLog(), []
    while True:
        try:
            return _train_attempt(cfg, run_dir, model_path, resume_from, flog, restarted_from)
        except LearnerFailure as err:
            flog.add("faults/restarts_learner")
            if flog.counts["faults/restarts_learner"] > cfg.train.max_restarts:
                raise LearnerFailure(f"{err}; no restarts left (train.max_restarts={cfg.train.max_restarts})") from err
            resume_from = checkpoint.latest_checkpoint(run_dir / "checkpoints")
            flog.failed_at = time.perf_counter()
            restarted_from.append(checkpoint.load_controller_state(resume_from)["step"] if resume_from else 0)
            print(
                f"learner failed at step {flog.step}: {err}\nrestarting from "
                f"{resume_from or 'the start (no checkpoint yet)'}",
                file=sys.stderr,
                flush=True,
            )


def _train_attempt(
    cfg: Config, run_dir: Path, model_path: str, resume_from: Path | None, flog: FaultLog, restarted_from: list[int]
) -> dict:
    tc, n = cfg.train, cfg.rollout.samples_per_prompt
    task = make_task(cfg.task)
    stream = PromptStream(task, cfg.seed)
    ledger = SampleLedger(n)
    saved = checkpoint.load_controller_state(resume_from) if resume_from else None
    if saved:
        now = cfg.model_dump(mode="json")
        bad = [k for k in _MUST_MATCH if _pick(now, k) != _pick(saved["config"], k)]
        if bad:
            raise checkpoint.CheckpointError(f"{resume_from}: config differs from the checkpoint's in {bad}")
    comps = Components.start(cfg, model_path)
    follower = tracker = consumed_log = None
    learner_failed = False
    try:
        if cfg.serve.enabled:  # the OpenAI endpoint follows training by in-place hot swap
            from rl_service.serving.follow import ServeFollower

            follower = ServeFollower.start(cfg.serve, model_path)
        probes = probe_sequences(model_path, task)

        def save(step: int) -> Path:
            tmp = checkpoint.begin(run_dir / "checkpoints", step)
            learner_info = comps.save_checkpoint(tmp)
            if faults.fire("kill_in_checkpoint", step):
                faults.kill_self()
            state = {
                "step": step,
                "policy_version": version,
                "next_batch_id": pipe.next_batch_id,
                "stream": stream.state_dict(),
                "ledger": ledger.state_dict(),
                "pending": pipe.pending_json(),
                "accuracy_start": acc_start,
                "accuracy": acc,
                "learner": learner_info,
                "config": cfg.model_dump(mode="json"),
            }
            return checkpoint.commit(run_dir / "checkpoints", tmp, step, state, tc.keep_last)

        if saved:  # -------------------------------------------------- exact resume
            comps.load_checkpoint(resume_from)
            stream.load_state_dict(saved["stream"])
            ledger.load_state_dict(saved["ledger"])
            start_step, version = saved["step"], saved["policy_version"]
            pipe = BatchPipeline(cfg, comps, stream, ledger, flog, next_batch_id=saved["next_batch_id"])
            acc_start, acc = saved["accuracy_start"], saved["accuracy"]
            comps.publish(version, probes)  # workers start from the checkpoint's policy
            pipe.retrying(comps.load_published)
        else:
            start_step, version = 0, 0
            pipe = BatchPipeline(cfg, comps, stream, ledger, flog)
            acc_start = acc = evaluate(comps.workers, task, cfg.rollout.max_new_tokens)
        for path in (run_dir / "metrics.jsonl", run_dir / "consumed.jsonl"):
            _truncate_jsonl(path, start_step)  # rows of steps after the checkpoint are redone
        comps.start_loops()
        tracker = RunTracker(run_dir, tc.steps, start_step=start_step, accuracy=acc, cfg=cfg)
        consumed_log = (run_dir / "consumed.jsonl").open("a")
        if saved:  # the batches in flight at the checkpoint, under their original ids
            for d in saved["pending"]:
                pipe.put(batch_from_json(d))
        else:
            pipe.issue(pipe.batches_per_step * min(1 + tc.max_policy_lag, tc.steps))
        if flog.failed_at is not None:  # restarted after a learner failure: what it cost
            flog.event(
                kind="learner",
                step=flog.step,
                resumed_from_step=start_step,
                steps_redone=flog.step - 1 - start_step,
                recover_s=time.perf_counter() - flog.failed_at,
            )
            flog.failed_at = None
        last_saved = start_step if saved else -1
        for step in range(start_step, tc.steps):
            t_step = time.perf_counter()
            flog.step = step + 1
            collected = pipe.collect(version)  # 1. collect one step of batches
            refs, summaries = [g[0] for g in collected], [g[1] for g in collected]
            t_collected = time.perf_counter()
            if faults.fire("kill_learner", step + 1):
                comps.kill_learner_soon(0.1)
            metrics = comps.train_step(refs, n)  # 2. PPO update on FSDP2
            pipe.mark_trained(summaries)
            consumed_log.write(
                json.dumps(
                    {
                        "step": step + 1,
                        "batch_ids": [s.batch_id for s in summaries],
                        "prompt_ids": [p for s in summaries for p in s.prompt_ids],
                    }
                )
                + "\n"
            )
            consumed_log.flush()
            t_trained = time.perf_counter()
            version += 1
            halt = _guard(cfg, metrics)
            sync = {"probe_max_diff": float("nan"), "publish_s": 0.0, "load_s": 0.0}
            if halt is None:
                sync = comps.publish(version, probes)  # 3. publish + verified load
                t_published = time.perf_counter()
                sync.update(pipe.retrying(comps.load_published))
                sync["publish_s"] = t_published - t_trained
                if follower:
                    follower.on_version(version, sync["state_ref"], sync["meta_ref"])
                if step + 1 + tc.max_policy_lag < tc.steps:  # 4. keep the pipeline full
                    pipe.issue(pipe.batches_per_step)
            t_synced = time.perf_counter()
            if halt is None and tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
                acc = evaluate(comps.workers, task, cfg.rollout.max_new_tokens)
                metrics["eval/accuracy"] = acc
            tokens = sum(s.num_response_tokens for s in summaries)
            step_s = time.perf_counter() - t_step
            metrics.update(
                {
                    "step": step + 1,
                    "policy_version": version,
                    "policy/lag_mean": sum(version - 1 - s.policy_version for s in summaries) / len(summaries),
                    "timing_s/generate": sum(s.generate_s for s in summaries) / cfg.rollout.num_workers,
                    "timing_s/reward": sum(s.reward_s for s in summaries) / cfg.reward.num_scorers,
                    "timing_s/wait": t_collected - t_step,
                    "timing_s/train": t_trained - t_collected,
                    # the learner's own compute time; timing_s/train adds Ray dispatch and batch transfer
                    "timing_s/train_compute": metrics.get("timing_s/train", float("nan")),
                    "timing_s/weight_sync": t_synced - t_trained,
                    "timing_s/step": step_s,
                    "timing_s/publish": sync["publish_s"],
                    "timing_s/load": sync["load_s"],
                    "weight_sync/probe_max_diff": sync["probe_max_diff"],
                    "perf/tokens_per_s": tokens / step_s,
                    "perf/samples_per_s": sum(len(s.sample_ids) for s in summaries) / step_s,
                    **comps.queue_depths(),
                    **ledger.counts(),
                    **flog.counts,
                }
            )
            if halt is not None or (tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0):
                t_ckpt = time.perf_counter()
                path = save(step + 1)
                last_saved = step + 1
                metrics["timing_s/checkpoint"] = time.perf_counter() - t_ckpt
            tracker.log(metrics)
            if halt is not None:
                tracker.write_summary(
                    {"steps": step + 1, "halted": halt, "checkpoint": str(path), **ledger.counts(), **flog.summary()}
                )
                raise TrainingHalted(f"{halt}; state at step {step + 1} saved in {path}")
        comps.stop_loops()
        if last_saved != tc.steps:
            save(tc.steps)
        acc_end = evaluate(comps.workers, task, cfg.rollout.max_new_tokens)
        comps.save_final(run_dir / "final")
        summary = {
            "steps": tc.steps,
            "wall_s": time.perf_counter() - flog.t0,
            "policy_version": version,
            "resumed_from_step": start_step if saved else None,
            "eval/accuracy_start": acc_start,
            "eval/accuracy_end": acc_end,
            "eval/accuracy_gain": acc_end - acc_start,
            "model_path": str(model_path),
            "final_dir": str(run_dir / "final"),
            **ledger.check(),
            **flog.summary(),
            "faults/restarted_from_steps": restarted_from,
        }
        tracker.write_summary(summary)
        return summary
    except LearnerFailure:
        learner_failed = True
        raise
    finally:
        for closable in (consumed_log, tracker):
            if closable is not None:
                closable.close()
        if follower:
            follower.stop()
        comps.shutdown(graceful=not learner_failed)


def _guard(cfg: Config, metrics: dict) -> str | None:
    """Why the run must halt after this step, or None."""
    streak = metrics.get("train/nan_streak", 0)
    if streak >= cfg.train.max_nan_steps:
        return (
            f"{int(streak)} optimizer steps in a row skipped for a NaN/inf loss or gradient "
            f"(train.max_nan_steps={cfg.train.max_nan_steps})"
        )
    if metrics.get("policy/kl_hard_limit_hit", 0) > 0:
        return (
            f"KL to the sampling policy reached {metrics.get('policy/approx_kl_max', float('nan')):.3g}, above "
            f"learner.kl_hard_limit={cfg.learner.kl_hard_limit}: the policy blew up (lower learner.lr?)"
        )
    return None
