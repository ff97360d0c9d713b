"""SFT warm start: teach the random model the answer format until a base accuracy.

Sequence `<s>37+48=85</s>`; cross-entropy only on the answer and EOS tokens. Stops as
soon as held-out greedy accuracy reaches `cfg.target_accuracy`, so RL has room to improve.
A task may bring its own data and metric (`task.sft_batch(tokenizer, rng, batch_size)`,
`task.sft_metric(model, tokenizer)`): environment tasks train on naive play and measure
greedy episode success (tasks/guess_number.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rl_service.algo.masking import right_pad
from rl_service.config import SFTConfig
from rl_service.models.evaluate import greedy_accuracy_hf
from rl_service.tasks.addition import AdditionTask

WARMUP_STEPS = 20
PROBE_STEPS = 6
"""Steps timed per thread count when picking torch threads (see `_pick_threads`)."""


def warmup_cosine(max_steps: int) -> Callable[[int], float]:
    """LR factor of step s: linear warmup (WARMUP_STEPS, at most a tenth of the run), then cosine
    to 10% over max_steps. SFT usually stops early, long before the decay matters."""
    warmup = min(WARMUP_STEPS, max(max_steps // 10, 1))

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(max_steps - warmup, 1)))

    return factor


def make_sft_batch(tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
    """Right-padded batch. Returns input_ids [B, T], attention_mask [B, T], labels [B, T]
    (labels = -100 everywhere except answer and EOS tokens; the model shifts them)."""
    prompts = tokenizer([f"{a}+{b}=" for a, b in pairs])["input_ids"]  # BOS included
    answers = tokenizer([str(a + b) for a, b in pairs], add_special_tokens=False)["input_ids"]
    seqs = [p + ans + [tokenizer.eos_token_id] for p, ans in zip(prompts, answers)]
    ids, mask = right_pad(seqs, tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        labels[i, len(p) : len(s)] = ids[i, len(p) : len(s)]
    return ids, mask, labels


def sft_loss(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean CE over answer+EOS tokens. Metrics: `seq_acc` = teacher-forced argmax right on
    every answer token, which equals greedy exact match on these examples."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # [B, T-1, V]
    target = labels[:, 1:]  # [B, T-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    with torch.no_grad():
        valid = target != -100
        ok = (logits.argmax(-1) == target) | ~valid
        seq_acc = ok.all(-1).float().mean().item()
    return loss, {"loss": loss.item(), "seq_acc": seq_acc}


def sft_warm_start(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: AdditionTask | Any,
    cfg: SFTConfig,
    seed: int,
    progress: bool = True,
) -> dict[str, float]:
    """Train in place. Returns {"steps", "accuracy" (held-out greedy), "seconds", "loss" (EMA),
    "threads" (torch threads used after the probe)}."""
    start = time.perf_counter()
    batch_fn = getattr(task, "sft_batch", None) or (
        lambda tok, rng, n: make_sft_batch(tok, [task.sample_train(rng) for _ in range(n)])
    )
    metric_fn = getattr(task, "sft_metric", None) or (lambda m, tok: greedy_accuracy_hf(m, tok, task.eval_problems))
    accuracy = metric_fn(model, tokenizer)
    if cfg.max_steps == 0 or accuracy >= cfg.target_accuracy:
        return {
            "steps": 0,
            "accuracy": accuracy,
            "seconds": time.perf_counter() - start,
            "loss": float("nan"),
            "threads": torch.get_num_threads(),
        }
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.max_steps))
    model.train()
    threads_before = torch.get_num_threads()
    step_times: dict[int, list[float]] = {}
    bar = tqdm(total=cfg.max_steps, desc="sft", disable=not progress, mininterval=1.0, leave=False)
    loss_ema, step = float("nan"), 0
    for step in range(1, cfg.max_steps + 1):
        threads = _pick_threads(step, threads_before, step_times)
        t0 = time.perf_counter()
        ids, mask, labels = batch_fn(tokenizer, rng, cfg.batch_size)
        loss, metrics = sft_loss(model, ids, mask, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step_times.setdefault(threads, []).append(time.perf_counter() - t0)
        loss_ema = metrics["loss"] if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * metrics["loss"]
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{metrics['seq_acc']:.2f}", eval=f"{accuracy:.2f}", refresh=False)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            accuracy = metric_fn(model, tokenizer)
            if accuracy >= cfg.target_accuracy:
                break
    bar.close()
    torch.set_num_threads(threads_before)
    model.eval()
    return {
        "steps": step,
        "accuracy": accuracy,
        "seconds": time.perf_counter() - start,
        "loss": loss_ema,
        "threads": threads,
    }


def _pick_threads(step: int, max_threads: int, step_times: dict[int, list[float]]) -> int:
    """Torch intra-op threads for this step: probe 1 thread, then `max_threads`, keep the faster.

    Why: for a ~1M-param model on 2 cores, 2 threads is ~1.5x faster on an idle machine but
    up to ~10x SLOWER than 1 thread when other processes keep a core busy (OpenMP threads
    wait on each other). The median of the probe steps decides for the rest of the run.
    """
    if max_threads <= 1:
        return max_threads
    if step <= PROBE_STEPS:  # the first step also pays one-off warm-up costs: probed but not counted
        n = 1
    elif step <= 2 * PROBE_STEPS:
        n = max_threads
    else:
        one, many = (sorted(step_times[k][-(PROBE_STEPS - 1) :]) for k in (1, max_threads))
        n = 1 if one[len(one) // 2] <= many[len(many) // 2] else max_threads
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
