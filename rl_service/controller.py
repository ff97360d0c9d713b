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

Checkpoints (rl_service/checkpoint.py) are taken at step boundaries, after the next step's
prompts were issued: they hold the learner state and everything the driver owns (data
position, next batch id, policy version, the ledger and the PromptBatches still in flight).
A resumed run reloads the learners, syncs the restored policy to the workers and re-puts the
in-flight batches under their original batch ids, so with lag 0 it samples and trains
exactly what the uninterrupted run would have (batches are trained in batch-id order).
Guards halt the run with a checkpoint: train.max_nan_steps skipped steps in a row, or a
minibatch KL above learner.kl_hard_limit.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from rl_service import checkpoint
from rl_service.config import Config
from rl_service.ledger import SampleLedger
from rl_service.tasks.addition import AdditionTask, PromptStream
from rl_service.tracking import RunTracker
from rl_service.types import Prompt, PromptBatch
from rl_service.runtime import Components, evaluate, probe_sequences

# Fault injection for tests: "kill_in_checkpoint:<step>" SIGKILLs this driver after the
# learners wrote that step's shards, before the checkpoint is committed.
FAULT_ENV = "RL_SERVICE_FAULT"
# Config keys that must match between a checkpoint and the run resuming from it.
_MUST_MATCH = ("seed", "task", "rollout.samples_per_prompt", "rollout.prompts_per_batch", "train.prompts_per_step")


class TrainingHalted(RuntimeError):
    """A health guard stopped the run; a checkpoint of the state at the halt was written."""


def _pick(cfg_dump: dict, key: str):
    for part in key.split("."):
        cfg_dump = cfg_dump[part]
    return cfg_dump


def _batch_to_json(b: PromptBatch) -> dict:
    return {"batch_id": b.batch_id, "prompts": [[p.prompt_id, p.text, p.metadata] for p in b.prompts]}


def _batch_from_json(d: dict) -> PromptBatch:
    return PromptBatch(int(d["batch_id"]), tuple(Prompt(int(i), t, dict(m)) for i, t, m in d["prompts"]))


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows a crashed run logged after its last checkpoint (they will be redone)."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(r + "\n" for r in rows if json.loads(r).get("step", 0) <= last_step))


def train(cfg: Config, run_dir: Path, model_path: str, resume_from: Path | None = None) -> dict:
    """Run PPO updates up to `cfg.train.steps`; returns the summary (also written to summary.json).

    resume_from: a complete checkpoint dir; the run continues from its step exactly."""
    t0 = time.perf_counter()
    tc, n = cfg.train, cfg.rollout.samples_per_prompt
    task = AdditionTask(cfg.task)
    stream = PromptStream(task, cfg.seed)
    ledger = SampleLedger(n)
    saved = checkpoint.load_controller_state(resume_from) if resume_from else None
    if saved:
        now = cfg.model_dump(mode="json")
        bad = [k for k in _MUST_MATCH if _pick(now, k) != _pick(saved["config"], k)]
        if bad:
            raise checkpoint.CheckpointError(f"{resume_from}: config differs from the checkpoint's in {bad}")
    comps = Components.start(cfg, model_path)
    follower = None
    try:
        if cfg.serve.enabled:  # the OpenAI endpoint follows training by in-place hot swap
            from rl_service.serving.follow import ServeFollower

            follower = ServeFollower.start(cfg.serve, model_path)
        probes = probe_sequences(model_path, task)
        batches_per_step = tc.prompts_per_step // cfg.rollout.prompts_per_batch
        pending: dict[int, PromptBatch] = {}  # issued, not yet trained or dropped (in checkpoints)
        if saved:  # -------------------------------------------------- exact resume
            comps.load_checkpoint(resume_from)
            stream.load_state_dict(saved["stream"])
            ledger.load_state_dict(saved["ledger"])
            start_step, version, next_batch_id = saved["step"], saved["policy_version"], saved["next_batch_id"]
            acc_start, acc = saved["accuracy_start"], saved["accuracy"]
            comps.sync_weights(version, probes)  # workers start from the checkpoint's policy
            for path in (run_dir / "metrics.jsonl", run_dir / "consumed.jsonl"):
                _truncate_jsonl(path, start_step)
        else:
            start_step, version, next_batch_id = 0, 0, 0
            acc_start = acc = evaluate(comps.workers, task, cfg.rollout.max_new_tokens)
        comps.start_loops()
        tracker = RunTracker(run_dir, tc.steps, start_step=start_step, accuracy=acc, cfg=cfg)
        consumed_log = (run_dir / "consumed.jsonl").open("a")

        def put(batch: PromptBatch) -> None:
            pending[batch.batch_id] = batch
            comps.prompt_q.put(batch)

        def issue(num_batches: int) -> None:
            nonlocal next_batch_id
            for _ in range(num_batches):
                prompts = stream.next_batch(cfg.rollout.prompts_per_batch)
                ledger.issue(p.prompt_id for p in prompts)
                put(PromptBatch(next_batch_id, tuple(prompts)))
                next_batch_id += 1

        def save(step: int) -> Path:
            tmp = checkpoint.begin(run_dir / "checkpoints", step)
            learner_info = comps.save_checkpoint(tmp)
            fault = os.environ.get(FAULT_ENV, "")
            if fault == f"kill_in_checkpoint:{step}":
                os.kill(os.getpid(), signal.SIGKILL)
            state = {"step": step, "policy_version": version, "next_batch_id": next_batch_id,
                     "stream": stream.state_dict(), "ledger": ledger.state_dict(),
                     "pending": [_batch_to_json(pending[b]) for b in sorted(pending)],
                     "accuracy_start": acc_start, "accuracy": acc, "learner": learner_info,
                     "config": cfg.model_dump(mode="json")}
            return checkpoint.commit(run_dir / "checkpoints", tmp, step, state, tc.keep_last)

        if saved:  # the batches in flight at the checkpoint, under their original ids
            for d in saved["pending"]:
                comps.prompt_q.put(pending.setdefault(d["batch_id"], _batch_from_json(d)))
        else:
            issue(batches_per_step * min(1 + tc.max_policy_lag, tc.steps))
        last_saved = start_step if saved else -1
        for step in range(start_step, tc.steps):
            t_step = time.perf_counter()
            got, stale = [], 0
            while len(got) < batches_per_step:                       # 1. collect one step of batches
                ref, s = comps.next_scored(deadline=t_step + tc.timeout_s)
                pending.pop(s.batch_id, None)
                ledger.mark_dropped(s.dropped)
                if version - s.policy_version > tc.max_policy_lag:   # too old: drop, count, replace
                    ledger.mark_dropped((sid, "stale") for sid in s.sample_ids)
                    stale += len(s.sample_ids)
                    issue(1)
                    continue
                got.append((s.batch_id, ref, s))
            got.sort(key=lambda g: g[0])  # arrival order is a race; batch-id order is reproducible
            refs, summaries = [g[1] for g in got], [g[2] for g in got]
            t_collected = time.perf_counter()
            metrics = comps.train_step(refs, n)                        # 2. PPO update on FSDP2
            ledger.mark_trained(sid for s in summaries for sid in s.sample_ids)
            consumed_log.write(json.dumps({"step": step + 1, "batch_ids": [s.batch_id for s in summaries],
                                           "prompt_ids": [p for s in summaries for p in s.prompt_ids]}) + "\n")
            consumed_log.flush()
            t_trained = time.perf_counter()
            version += 1
            halt = _guard(cfg, metrics)
            sync = {"probe_max_diff": float("nan")}
            if halt is None:
                sync = comps.sync_weights(version, probes)             # 3. publish + verified load
                if follower:
                    follower.on_version(version, sync["state_ref"], sync["meta_ref"])
                if step + 1 + tc.max_policy_lag < tc.steps:            # 4. keep the pipeline full
                    issue(batches_per_step)
            t_synced = time.perf_counter()
            if halt is None and tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
                acc = evaluate(comps.workers, task, cfg.rollout.max_new_tokens)
                metrics["eval/accuracy"] = acc
            tokens = sum(s.num_response_tokens for s in summaries)
            step_s = time.perf_counter() - t_step
            metrics.update({
                "step": step + 1, "policy_version": version,
                "policy/lag_mean": sum(version - 1 - s.policy_version for s in summaries) / len(summaries),
                "timing_s/generate": sum(s.generate_s for s in summaries) / cfg.rollout.num_workers,
                "timing_s/reward": sum(s.reward_s for s in summaries) / cfg.reward.num_scorers,
                "timing_s/wait": t_collected - t_step, "timing_s/train": t_trained - t_collected,
                "timing_s/weight_sync": t_synced - t_trained, "timing_s/step": step_s,
                "weight_sync/probe_max_diff": sync["probe_max_diff"],
                "perf/tokens_per_s": tokens / step_s, "perf/samples_per_s": sum(len(s.sample_ids) for s in summaries) / step_s,
                "queue/prompts_depth": comps.prompt_q.qsize(), "queue/rollouts_depth": comps.rollout_q.qsize(),
                "queue/scored_depth": comps.scored_q.qsize(),
                **ledger.counts(),
            })
            if halt is not None or (tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0):
                t_ckpt = time.perf_counter()
                path = save(step + 1)
                last_saved = step + 1
                metrics["timing_s/checkpoint"] = time.perf_counter() - t_ckpt
            tracker.log(metrics)
            if halt is not None:
                tracker.write_summary({"steps": step + 1, "halted": halt, "checkpoint": str(path), **ledger.counts()})
                tracker.close()
                raise TrainingHalted(f"{halt}; state at step {step + 1} saved in {path}")
        comps.stop_loops()
        if last_saved != tc.steps:
            save(tc.steps)
        consumed_log.close()
        acc_end = evaluate(comps.workers, task, cfg.rollout.max_new_tokens)
        comps.save_final(run_dir / "final")
        summary = {"steps": tc.steps, "wall_s": time.perf_counter() - t0, "policy_version": version,
                   "resumed_from_step": start_step if saved else None,
                   "eval/accuracy_start": acc_start, "eval/accuracy_end": acc_end,
                   "eval/accuracy_gain": acc_end - acc_start, "model_path": str(model_path),
                   "final_dir": str(run_dir / "final"), **ledger.check()}
        tracker.write_summary(summary)
        tracker.close()
        return summary
    finally:
        if follower:
            follower.stop()
        comps.shutdown()


def _guard(cfg: Config, metrics: dict) -> str | None:
    """Why the run must halt after this step, or None."""
    streak = metrics.get("train/nan_streak", 0)
    if streak >= cfg.train.max_nan_steps:
        return (f"{int(streak)} optimizer steps in a row skipped for a NaN/inf loss or gradient "
                f"(train.max_nan_steps={cfg.train.max_nan_steps})")
    if metrics.get("policy/kl_hard_limit_hit", 0) > 0:
        return (f"KL to the sampling policy reached {metrics.get('policy/approx_kl_max', float('nan')):.3g}, above "
                f"learner.kl_hard_limit={cfg.learner.kl_hard_limit}: the policy blew up (lower learner.lr?)")
    return None
