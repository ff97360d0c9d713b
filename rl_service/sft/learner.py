"""The SFT learner: one instance per process, the policy FSDP2-sharded over all of them.

A plain class (no Ray): placement.make_sft_learners wraps it with ray.remote; tests run it
under torch.multiprocessing. Every public method except __init__ is collective: the driver
(rl_service/sft/loop.py) calls it on every rank with the same arguments.

    learner = SFTLearner(learner_cfg, sft_cfg, model_path, rank, world_size, addr, port, seed)
    learner.setup()
    metrics = learner.train_step(examples)          # one optimizer step on the whole batch
    completions = learner.generate(prompt_ids, n)   # greedy token ids on rank 0, None elsewhere
    learner.save_hf(out_dir)                        # same files as the PPO learner's export

The loss is the mean cross-entropy over the RESPONSE tokens of the whole batch: each rank sums
its share's token losses and divides by the batch's global response-token count (every rank
gets the whole batch, so it knows that count), times world_size because FSDP2 averages
gradients over ranks. One process and two then take the same step up to float rounding.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence

import torch

from rl_service.algo.masking import masked_sum
from rl_service.config import LearnerConfig, SFTConfig
from rl_service.learner import export, fsdp
from rl_service.learner.batching import rank_micro_batches
from rl_service.learner.forward import active_or_dummy, policy_logprobs
from rl_service.learner.learner import _pad_id
from rl_service.models.evaluate import greedy_generate_ids
from rl_service.models.sft import warmup_cosine
from rl_service.sft.batches import Example, response_tokens, sft_tensors

EVAL_CHUNK = 64
"""Prompts per greedy-generation batch on rank 0 (sorted by length, so padding stays small)."""


class SFTLearner:
    def __init__(
        self,
        cfg: LearnerConfig,
        sft: SFTConfig,
        model_path: str,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        seed: int,
    ):
        """Cheap: stores arguments, no collectives, no model loading. From `cfg` (the run's
        learner section) it takes backend, micro_batch_size, max_grad_norm, weight_decay."""
        self.cfg, self.sft = cfg, sft
        self.model_path = model_path
        self.rank, self.world_size = rank, world_size
        self.master_addr, self.master_port = master_addr, master_port
        self.seed = seed
        self.step = 0
        self.policy = None
        self.device = torch.device("cpu")
        self.pad_id = 0
        self._plain = None  # rank 0's unsharded copy for generation, built at the first eval
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))

    def setup(self) -> dict:
        """Join the process group, load and shard the policy, build AdamW + warmup/cosine."""
        from transformers import AutoModelForCausalLM

        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        backend = fsdp.resolve_backend(self.cfg.backend)
        self.device, mesh = fsdp.init_distributed(
            backend, self.rank, self.world_size, self.master_addr, self.master_port
        )
        torch.manual_seed(self.seed)
        policy = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.pad_id = _pad_id(policy.config)
        num_params = sum(p.numel() for p in policy.parameters())
        # eval mode: no dropout, as in the PPO learner (the tiny models have none anyway)
        self.policy = fsdp.shard(policy.to(self.device).eval(), mesh)
        self.opt = torch.optim.AdamW(
            self.policy.parameters(), lr=self.sft.lr, weight_decay=self.cfg.weight_decay, betas=(0.9, 0.98)
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, warmup_cosine(self.sft.max_steps))
        return {"num_params": num_params, "backend": backend, "device": str(self.device)}

    def train_step(self, examples: Sequence[Example]) -> dict[str, float]:
        """One optimizer step on `examples` (the same whole batch on every rank; each rank trains
        its contiguous share). A non-finite loss or gradient norm skips the step (counted).
        Returns `loss/sft`, `grad_norm`, `policy/lr`, `tokens/response`, `train/skipped_steps`,
        `timing_s/train`, identical on every rank."""
        assert self.policy is not None, "call setup() first"
        t0 = time.perf_counter()
        if not examples:
            raise ValueError("train_step got no examples")
        ids, attention, loss_mask = sft_tensors(examples, self.pad_id)  # [N, T], [N, T], [N, T-1]
        denom = float(response_tokens(examples))  # global: every rank sees the whole batch
        local_loss = 0.0
        micro = rank_micro_batches(range(len(examples)), self.rank, self.world_size, self.cfg.micro_batch_size)
        for raw in micro:
            idx, active = active_or_dummy(raw)  # every rank joins every FSDP collective
            mask = loss_mask[idx].to(self.device) * float(active)
            logprobs, _ = policy_logprobs(self.policy, ids[idx].to(self.device), attention[idx].to(self.device))
            loss = -masked_sum(logprobs, mask) / denom  # this rank's share of the batch mean
            (loss * self.world_size).backward()  # FSDP2 averages gradients; undo it to get the sum
            local_loss += float(loss.detach())
        total_loss = fsdp.all_reduce_metrics({"loss": local_loss}, self.device)["loss"]
        norm = fsdp.clip_grad_norm(self.policy, self.cfg.max_grad_norm)
        finite = math.isfinite(total_loss) and math.isfinite(norm)
        lr = self.sched.get_last_lr()[0]
        if finite:
            self.opt.step()
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "loss/sft": total_loss,
            "grad_norm": norm,
            "policy/lr": lr,
            "tokens/response": denom,
            "train/skipped_steps": float(not finite),
            "timing_s/train": time.perf_counter() - t0,
        }

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]] | None:
        """Greedy completions (token ids, cut after EOS) of `prompt_ids` with the current weights.

        Collective: the full state dict is gathered to rank 0, which loads it into a plain HF
        model and generates there (KV cache); rank 0 returns one list per prompt, others None.
        A completion is cut where prompt + completion would pass the model's position limit.
        """
        assert self.policy is not None, "call setup() first"
        state_dict = fsdp.full_state_dict(self.policy)
        if self.rank != 0:
            return None
        plain = self._plain_model()
        plain.load_state_dict(state_dict, strict=True)
        cfg = plain.config
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else self.pad_id
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        out: list[list[int]] = [[] for _ in prompt_ids]
        for start in range(0, len(order), EVAL_CHUNK):
            chunk = order[start : start + EVAL_CHUNK]
            rows = [list(prompt_ids[i]) for i in chunk]
            budget = max_new_tokens if limit is None else min(max_new_tokens, limit - max(map(len, rows)))
            completions = greedy_generate_ids(plain, rows, self.pad_id, eos, max(budget, 0))
            for i, c in zip(chunk, completions):
                out[i] = c
        return out

    def _plain_model(self):
        if self._plain is None:
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(self.model_path)
            self._plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(self.device).eval()
        return self._plain

    def save_hf(self, out_dir: str) -> None:
        """Rank 0 writes an HF directory (config, safetensors, tokenizer files); collective."""
        assert self.policy is not None, "call setup() first"
        export.save_hf(self.policy, self.model_path, out_dir, self.rank)

    def shutdown(self) -> None:
        fsdp.destroy()
