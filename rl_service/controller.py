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
"""

from __future__ import annotations

import time
from pathlib import Path

import ray

from rl_service.config import Config
from rl_service.ledger import SampleLedger
from rl_service.tasks.addition import AdditionTask, PromptStream
from rl_service.tracking import RunTracker
from rl_service.types import BatchSummary, PromptBatch
from rl_service.runtime import Components, evaluate, probe_sequences


def train(cfg: Config, run_dir: Path, model_path: str) -> dict:
    """Run `cfg.train.steps` PPO updates; returns the summary (also written to summary.json)."""
    t0 = time.perf_counter()
    tc, n = cfg.train, cfg.rollout.samples_per_prompt
    task = AdditionTask(cfg.task)
    stream = PromptStream(task, cfg.seed)
    ledger = SampleLedger(n)
    comps = Components.start(cfg, model_path)
    follower = None
    try:
        if cfg.serve.enabled:  # the OpenAI endpoint follows training by in-place hot swap
            from rl_service.serving.follow import ServeFollower

            follower = ServeFollower.start(cfg.serve, model_path)
        probes = probe_sequences(model_path, task)
        acc_start = evaluate(comps.workers, task, cfg.rollout.max_new_tokens)
        comps.start_loops()
        tracker = RunTracker(run_dir, tc.steps, accuracy=acc_start, cfg=cfg)
        batches_per_step = tc.prompts_per_step // cfg.rollout.prompts_per_batch
        next_batch_id, version, acc = 0, 0, acc_start

        def issue(num_batches: int) -> None:
            nonlocal next_batch_id
            for _ in range(num_batches):
                prompts = stream.next_batch(cfg.rollout.prompts_per_batch)
                ledger.issue(p.prompt_id for p in prompts)
                comps.prompt_q.put(PromptBatch(next_batch_id, tuple(prompts)))
                next_batch_id += 1

        issue(batches_per_step * min(1 + tc.max_policy_lag, tc.steps))
        for step in range(tc.steps):
            t_step = time.perf_counter()
            refs, summaries, stale = [], [], 0
            while len(refs) < batches_per_step:                      # 1. collect one step of batches
                ref, s = comps.next_scored(deadline=t_step + tc.timeout_s)
                ledger.mark_dropped(s.dropped)
                if version - s.policy_version > tc.max_policy_lag:   # too old: drop, count, replace
                    ledger.mark_dropped((sid, "stale") for sid in s.sample_ids)
                    stale += len(s.sample_ids)
                    issue(1)
                    continue
                refs.append(ref)
                summaries.append(s)
            t_collected = time.perf_counter()
            metrics = comps.train_step(refs, n)                        # 2. PPO update on FSDP2
            ledger.mark_trained(sid for s in summaries for sid in s.sample_ids)
            t_trained = time.perf_counter()
            version += 1
            sync = comps.sync_weights(version, probes)                 # 3. publish + verified load
            if follower:
                follower.on_version(version, sync["state_ref"], sync["meta_ref"])
            if step + 1 + tc.max_policy_lag < tc.steps:                # 4. keep the pipeline full
                issue(batches_per_step)
            t_synced = time.perf_counter()
            if tc.eval_every and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
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
                "queue/prompts_depth": comps.prompt_q.qsize(), "queue/scored_depth": comps.scored_q.qsize(),
                **ledger.counts(),
            })
            tracker.log(metrics)
        comps.stop_loops()
        acc_end = evaluate(comps.workers, task, cfg.rollout.max_new_tokens)
        comps.save_final(run_dir / "final")
        summary = {"steps": tc.steps, "wall_s": time.perf_counter() - t0, "policy_version": version,
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
