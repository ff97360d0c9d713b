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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from rl_service.config import Config, RewardConfig
from rl_service.infra import placement
from rl_service.infra.components import learner_results
from rl_service.reward.functions import InvalidReward, checked_reward, resolve_reward_fn
from rl_service.sft.batches import batch_order
from rl_service.tracking.run import RunTracker

Score = Callable[[str, str, dict[str, Any]], float]
"""score(prompt_text, completion_text, metadata) -> reward; raises InvalidReward."""


def eval_reward(cfg: RewardConfig) -> Score:
    """The run's reward as one callable (the same function `train` scores samples with)."""
    fn = resolve_reward_fn(cfg.fn)
    return lambda prompt, completion, metadata: checked_reward(fn, prompt, completion, metadata)


def run_sft(cfg: Config, run_dir: Path, model_path: str, task, tokenizer) -> dict[str, Any]:
    """Fine-tune `model_path` on `task` (bound to `tokenizer`: it has `sft_examples()`,
    `eval_prompts` with token ids, `cfg.success_threshold`) inside a connected Ray; returns the
    summary (also written to `run_dir/summary.json`)."""
    t_start = time.perf_counter()
    sc = cfg.model.sft
    examples = task.sft_examples()
    evaluator = _Evaluator(task, tokenizer, eval_reward(cfg.reward), cfg.reward.on_error, cfg.rollout.max_new_tokens)
    learners, pg = placement.make_sft_learners(cfg, model_path)
    tracker = None
    try:
        info = learner_results(learners, [a.setup.remote() for a in learners], "setup")[0]
        print(
            f"sft: {len(examples)} examples, {len(evaluator.prompt_ids)} eval prompts, {info['num_params']} params "
            f"on {len(learners)} learner process(es) ({info['backend']})",
            flush=True,
        )
        start = evaluator(learners)
        tracker = RunTracker(run_dir, sc.max_steps, accuracy=start["eval/accuracy"], cfg=cfg)
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
            "timing_s/train": train_s,
            "timing_s/eval": evaluator.seconds,
            "wall_s": time.perf_counter() - t_start,
            "final_dir": str(final_dir),
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
    """Greedy completions of the eval prompts on the learners, scored in the driver."""

    def __init__(self, task, tokenizer, score: Score, on_error: str, max_new_tokens: int):
        self.prompts = list(task.eval_prompts)
        if not self.prompts:
            raise ValueError("the task has no eval prompts")
        self.prompt_ids = [list(p.token_ids) for p in self.prompts]
        self.tokenizer, self.score, self.on_error = tokenizer, score, on_error
        self.threshold = float(task.cfg.success_threshold)
        self.max_new_tokens = max_new_tokens
        self.seconds = 0.0
        self._ids_ref = None

    def __call__(self, learners: Sequence) -> dict[str, float]:
        """`eval/accuracy` (share with reward >= threshold; an invalid reward counts as a miss),
        `eval/reward_mean` (over valid rewards), `eval/reward_invalid`, `timing_s/eval`."""
        t0 = time.perf_counter()
        if self._ids_ref is None:
            self._ids_ref = ray.put(self.prompt_ids)
        calls = [a.generate.remote(self._ids_ref, self.max_new_tokens) for a in learners]
        completions = learner_results(list(learners), calls, "generate")[0]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        rewards, invalid = [], 0
        for prompt, text in zip(self.prompts, texts):
            try:
                rewards.append(self.score(prompt.text, text, dict(prompt.metadata)))
            except InvalidReward as err:
                if self.on_error == "fail":
                    raise InvalidReward(f"eval prompt {prompt.prompt_id}: reward {err}") from err
                invalid += 1
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        return {
            "eval/accuracy": sum(r >= self.threshold for r in rewards) / len(self.prompts),
            "eval/reward_mean": sum(rewards) / len(rewards) if rewards else float("nan"),
            "eval/reward_invalid": float(invalid),
            "timing_s/eval": seconds,
        }
