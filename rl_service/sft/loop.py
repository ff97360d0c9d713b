"""`rl-service sft`'s driver: supervised fine-tuning on the learner processes.

    task.sft_examples() --(seeded shuffle per epoch, model.sft.batch_size rows a step)--+
                                                                                         v
    SFTLearner x learner.num_workers (FSDP2)  <-- train_step(batch ref): masked CE step --+
        |  every model.sft.eval_every steps, and at the end:
        +--> generate(eval prompt ids): greedy on rank 0 --> decoded, scored with the run's
        |    reward --> eval/accuracy (reward >= task.success_threshold), eval/reward_mean
        +--> save_hf(runs/<name>/final)   (an HF directory `model.path` accepts)

Stops after model.sft.max_steps steps, or as soon as an eval reaches model.sft.target_accuracy
(also before the first step). Rows go to runs/<name>/metrics.jsonl (and W&B when
tracking.wandb), the result to summary.json.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from rl_service.config import Config
from rl_service.controller.evaluate import EvalReward
from rl_service.infra import placement
from rl_service.infra.components import learner_results
from rl_service.sft.batches import Example, batch_order
from rl_service.tracking.run import RunTracker


def run_sft(
    cfg: Config, run_dir: Path, model_path: str, examples: Sequence[Example], task, extra: dict | None = None
) -> dict[str, Any]:
    """Fine-tune `model_path` on `examples` inside a connected Ray, evaluating on `task`'s
    `eval_prompts` (token ids) against `task.cfg.success_threshold`; returns the summary (also
    written to `run_dir/summary.json`, with `extra` in it)."""
    from transformers import AutoTokenizer

    t_start = time.perf_counter()
    sc = cfg.model.sft
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    evaluator = _Evaluator(task, tokenizer, EvalReward(cfg), cfg.rollout.max_new_tokens)
    learners, pg = placement.make_sft_learners(cfg, model_path)
    tracker = None
    try:
        info = learner_results(learners, [a.setup.remote() for a in learners], "setup")[0]
        print(
            f"sft: {len(examples)} examples, {len(evaluator.prompt_ids)} eval prompts, {info['num_params']} params "
            f"on {len(learners)} learner process(es) ({info['backend']})",
            flush=True,
        )
        setup_s = time.perf_counter() - t_start  # actors started, policy loaded and sharded
        start = evaluator(learners)
        tracker = RunTracker(run_dir, sc.max_steps, accuracy=start["eval/accuracy"], cfg=cfg)
        tracker.bar.set_description("sft")
        last, step, train_s = start, 0, 0.0
        stream = batch_order(len(examples), sc.batch_size, cfg.seed)
        while step < sc.max_steps and last["eval/accuracy"] < sc.target_accuracy:
            t0 = time.perf_counter()
            epoch, idx = next(stream)
            batch = ray.put([examples[i] for i in idx])  # one object, read by every rank
            metrics = learner_results(learners, [a.train_step.remote(batch) for a in learners], "train_step")[0]
            step += 1
            train_s += time.perf_counter() - t0
            row = {"step": step, "epoch": epoch, **metrics}
            if step % sc.eval_every == 0 or step == sc.max_steps:
                last = evaluator(learners)
                row.update(last)
            row["timing_s/step"] = time.perf_counter() - t0
            tracker.log(row)
        final_dir = run_dir / "final"
        learner_results(learners, [a.save_hf.remote(str(final_dir)) for a in learners], "save_hf")
        summary = {
            "eval/accuracy_start": start["eval/accuracy"],
            "eval/accuracy_end": last["eval/accuracy"],
            "eval/accuracy_gain": last["eval/accuracy"] - start["eval/accuracy"],
            "eval/reward_mean_start": start["eval/reward_mean"],
            "eval/reward_mean_end": last["eval/reward_mean"],
            "stopped": "target_accuracy" if last["eval/accuracy"] >= sc.target_accuracy else "max_steps",
            "steps": step,
            "examples": len(examples),
            "eval_prompts": len(evaluator.prompt_ids),
            "learner_processes": len(learners),
            "timing_s/setup": setup_s,
            "timing_s/train": train_s,
            "timing_s/eval": evaluator.seconds,
            "wall_s": time.perf_counter() - t_start,
            "final_dir": str(final_dir),
            **(task.summary() if hasattr(task, "summary") else {}),
            **(extra or {}),
        }
        tracker.write_summary(summary)
        return summary
    finally:
        if tracker is not None:
            tracker.close()
        for a in learners:
            try:
                ray.get(a.shutdown.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - best effort on the way out (a rank may be dead)
                pass
            ray.kill(a)
        placement.release(pg)


class _Evaluator:
    """Greedy completions of the eval prompts on the learners (rank 0), scored in the driver with
    the run's reward as `train` scores its evals (controller/evaluate.py EvalReward)."""

    def __init__(self, task, tokenizer, score: EvalReward, max_new_tokens: int):
        self.prompts = list(task.eval_prompts)
        if not self.prompts:
            raise ValueError("the task has no eval prompts")
        self.prompt_ids = [list(p.token_ids) for p in self.prompts]
        self.tokenizer, self.score = tokenizer, score
        self.threshold = float(task.cfg.success_threshold)
        self.max_new_tokens = max_new_tokens
        self.seconds = 0.0
        self._ids_ref = None

    def __call__(self, learners: Sequence) -> dict[str, float]:
        """`eval/accuracy` (share of prompts with reward >= threshold; a reward that raises or is
        not a finite number counts as unsolved), `eval/reward_mean` (over valid rewards),
        `eval/invalid`, `timing_s/eval`."""
        t0 = time.perf_counter()
        if self._ids_ref is None:
            self._ids_ref = ray.put(self.prompt_ids)
        calls = [a.generate.remote(self._ids_ref, self.max_new_tokens) for a in learners]
        completions = learner_results(list(learners), calls, "generate")[0]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        scored = [self.score(p, text) for p, text in zip(self.prompts, texts)]
        valid = [r for r in scored if r is not None]
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        return {
            "eval/accuracy": sum(r >= self.threshold for r in valid) / len(self.prompts),
            "eval/reward_mean": sum(valid) / len(valid) if valid else float("nan"),
            "eval/invalid": float(len(scored) - len(valid)),
            "timing_s/eval": seconds,
        }
