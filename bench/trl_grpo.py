"""The TRL side of e2e_trl: TRL's GRPOTrainer on the addition task, one run, as a subprocess.

    .venv/bin/python -m bench.trl_grpo --model DIR --mode hf|vllm --steps N --prompts 16 --group 8 \
        --max-tokens 256 --lr 5e-5 --out result.json

Same prompts in the same order as rl_service (rl_service's PromptStream with the run seed,
`shuffle_dataset=False`), the same reward (`addition_exact`), group size, completion cap,
learning rate (constant, no warmup, AdamW, grad-norm clip 1.0, no KL) and number of
optimizer steps (one per step: `steps_per_generation=1`, `num_iterations=1`). `--mode vllm`
is TRL's colocated vLLM with the weight-sync shim (bench/trl_vllm_shim.py). Held-out
accuracy afterwards is the project's greedy exact match on the same 200 held-out problems.
Writes {"step_s": [...], "tokens": [...], "accuracy_end", "startup_s", ...} to --out.
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
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", choices=["hf", "vllm"], required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    setup_env()
    t_start = time.perf_counter()
    if args.mode == "vllm":
        # In-process engine, KV cache sized for a tiny model, no core pinning on a shared box.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl_service.config import AdditionConfig
    from rl_service.models.evaluate import greedy_accuracy_hf
    from rl_service.reward.functions import addition_exact
    from rl_service.tasks.addition import AdditionTask
    from rl_service.tasks.stream import PromptStream

    torch.set_num_threads(args.threads)
    if args.mode == "vllm":
        from bench.trl_vllm_shim import SYNC_SECONDS, patch_colocate_sync

        patch_colocate_sync()
    task = AdditionTask(AdditionConfig())
    prompts = PromptStream(task, args.seed).next_batch(args.prompts * args.steps)
    data = Dataset.from_dict({"prompt": [p.text for p in prompts], "answer": [p.metadata["answer"] for p in prompts]})
    tokens_per_call: list[int] = []

    def reward(prompts, completions, completion_ids, answer, **_):
        tokens_per_call.append(sum(len(ids) for ids in completion_ids))
        return [addition_exact(p, c, a) for p, c, a in zip(prompts, completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0, self.step_s = 0.0, []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.step_s.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    out_dir = REPO / ".tmp" / "bench" / f"trl-{args.mode}"
    cfg = GRPOConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=args.seed,
        max_steps=args.steps,
        per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=args.max_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=0.0,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        use_vllm=args.mode == "vllm",
        vllm_mode="colocate",
        vllm_max_model_length=json.loads((Path(args.model) / "config.json").read_text())["max_position_embeddings"],
    )
    tok = AutoTokenizer.from_pretrained(args.model)
    trainer = GRPOTrainer(
        model=args.model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok, callbacks=[timer]
    )
    torch.set_num_threads(args.threads)  # vLLM's CPU worker may have changed it
    startup_s = time.perf_counter() - t_start
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    model = trainer.model.eval()
    accuracy = greedy_accuracy_hf(model, tok, task.eval_problems)
    result = {
        "mode": args.mode,
        "steps": args.steps,
        "prompts_per_step": args.prompts,
        "group": args.group,
        "step_s": timer.step_s,
        "tokens": tokens_per_call,
        "startup_s": startup_s,
        "train_s": train_s,
        "accuracy_end": accuracy,
        "threads": args.threads,
        "sync_s": list(SYNC_SECONDS) if args.mode == "vllm" else [],
        "rewards": [h.get("reward") for h in trainer.state.log_history if "reward" in h],
        # vLLM vs trainer logprob gap per step: stays small only if the shim's weight sync works.
        "logp_diff_mean": [
            h.get("sampling/sampling_logp_difference/mean")
            for h in trainer.state.log_history
            if "sampling/sampling_logp_difference/mean" in h
        ],
    }
    Path(args.out).write_text(json.dumps(result))
    print(
        f"[trl-{args.mode}] {args.steps} steps, median step {sorted(timer.step_s)[len(timer.step_s) // 2]:.2f}s, "
        f"accuracy {accuracy:.3f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
