"""The TRL side of e2e_trl: TRL's GRPOTrainer on one workload shape, one run, as a subprocess.

    .venv/bin/python -m bench.trl_grpo --config .tmp/bench/configs/short.yaml --overrides '[...]' \
        --mode hf|vllm [--matched] --save DIR --out result.json

It reads the same config file and overrides as the rl_service side (bench/shapes.py): its prompts
are rl_service's PromptStream of that task with the run seed (same order, `shuffle_dataset=False`),
its reward is rl_service's `build_reward` of the same `reward` section, and the group size,
completion cap, learning rate (constant AdamW, no warmup, grad-norm clip 1.0, no KL) and number of
optimizer steps (one per step: `steps_per_generation=1`, `num_iterations=1`) are the config's.
`--mode vllm` is TRL's colocated vLLM with the weight-sync shim (bench/trl_vllm_shim.py); with
`--matched` its engine runs fp32 (as rl_service's) and without the importance-sampling pass
(`vllm_importance_sampling_correction=False`: no extra forward), the work rl_service lean does.
Per step it records completion tokens, tokens with a non-zero advantage (groups whose rewards
are not all equal: TRL's group-scaled advantages are 0 otherwise) and all tokens (prompt +
completion). The final model is saved to --save for the shared evaluator.
Writes {"step_s": [...], "tokens": [...], "nonzero_tokens": [...], "all_tokens": [...], ...} to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.common import REPO, setup_env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--overrides", required=True, help="JSON list of key=value overrides (bench/shapes.py)")
    ap.add_argument("--mode", choices=["hf", "vllm"], required=True)
    ap.add_argument("--matched", action="store_true", help="vLLM in fp32 and no importance-sampling pass")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--save", required=True, help="directory for the final model")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    setup_env()
    t_start = time.perf_counter()
    if args.mode == "vllm":
        # In-process engine, KV cache sized for a small model, no core pinning on a shared box.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl_service.config import load_config
    from rl_service.reward.combined import build_reward
    from rl_service.tasks import PromptStream, prepare_task

    torch.set_num_threads(args.threads)
    if args.mode == "vllm":
        from bench.trl_vllm_shim import SYNC_SECONDS, patch_colocate_sync, patch_engine_dtype

        patch_colocate_sync()
        if args.matched:
            patch_engine_dtype("float32")
    rc = load_config(args.config, json.loads(args.overrides))
    model_path, steps = rc.model.path, rc.train.steps
    prompts_per_step, group = rc.train.prompts_per_step, rc.rollout.samples_per_prompt
    task = prepare_task(rc.task, model_path, rc.rollout.max_new_tokens)
    prompts = PromptStream(task, rc.seed).next_batch(prompts_per_step * steps)
    keys = sorted(prompts[0].metadata)
    data = Dataset.from_dict(
        {"prompt": [p.text for p in prompts], **{k: [p.metadata[k] for p in prompts] for k in keys}}
    )
    run_reward = build_reward(rc.reward)
    tok = AutoTokenizer.from_pretrained(model_path)
    prompt_len = {p.text: len(tok(p.text)["input_ids"]) for p in prompts}
    counts: dict[str, list[int]] = {"tokens": [], "nonzero_tokens": [], "all_tokens": []}

    def reward(prompts, completions, completion_ids, **columns):
        meta = [{k: columns[k][i] for k in keys} for i in range(len(prompts))]
        values = [run_reward.score(p, c, m)[0] for p, c, m in zip(prompts, completions, meta)]
        lens = [len(ids) for ids in completion_ids]
        nonzero = 0
        for g in range(0, len(values), group):  # TRL repeats each prompt `group` times in a row
            if len(set(values[g : g + group])) > 1:
                nonzero += sum(lens[g : g + group])
        counts["tokens"].append(sum(lens))
        counts["nonzero_tokens"].append(nonzero)
        counts["all_tokens"].append(sum(lens) + sum(prompt_len[p] for p in prompts))
        return values

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0, self.step_s = 0.0, []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.step_s.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    cfg = GRPOConfig(
        output_dir=str(REPO / ".tmp" / "bench" / f"trl-{args.mode}"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=rc.seed,
        max_steps=steps,
        per_device_train_batch_size=prompts_per_step * group,
        gradient_accumulation_steps=1,
        num_generations=group,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=rc.rollout.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=rc.learner.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        use_vllm=args.mode == "vllm",
        vllm_mode="colocate",
        vllm_importance_sampling_correction=not args.matched,
        vllm_max_model_length=json.loads((Path(model_path) / "config.json").read_text())["max_position_embeddings"],
    )
    trainer = GRPOTrainer(
        model=model_path, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok, callbacks=[timer]
    )
    torch.set_num_threads(args.threads)  # vLLM's CPU worker may have changed it
    startup_s = time.perf_counter() - t_start
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    trainer.model.save_pretrained(args.save)
    tok.save_pretrained(args.save)
    result = {
        "mode": args.mode,
        "matched": args.matched,
        "steps": steps,
        "step_s": timer.step_s,
        **counts,
        "startup_s": startup_s,
        "train_s": train_s,
        "threads": args.threads,
        "sync_s": list(SYNC_SECONDS) if args.mode == "vllm" else [],
        "rewards": [h.get("reward") for h in trainer.state.log_history if "reward" in h],
    }
    Path(args.out).write_text(json.dumps(result))
    print(
        f"[trl-{args.mode}] {steps} steps, median step {sorted(timer.step_s)[len(timer.step_s) // 2]:.2f}s", flush=True
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
