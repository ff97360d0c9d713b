"""`train-rm` and `train-dpo`: learning from {prompt, chosen, rejected} pairs on FSDP2.

    train_preferences("rm" | "dpo", cfg, model_path, train_pairs, eval_pairs, out_dir) -> summary

Both loops share one shape: every process holds the same pair list, draws the same
seeded batch order and trains on its own slice of each batch (rank::world_size); the loss
divides by the GLOBAL batch size and is scaled by world_size before backward, because
FSDP2 averages gradients over ranks. Held-out evaluation runs the whole held-out set on
every rank (FSDP2 forwards are collective, and a few hundred pairs are cheap).

- rm: `AutoModelForSequenceClassification(num_labels=1)` initialised from the policy
  directory; reward = the score at the last non-pad token; Bradley–Terry loss. Saved as
  an HF directory (config, safetensors, tokenizer) that transformers loads directly.
- dpo: the policy against a frozen copy of itself (the reference); DPO loss on summed
  completion logprobs (completion tokens + EOS). Saved as a causal-LM HF directory.

With num_workers > 1 the ranks are torch.multiprocessing processes (gloo on CPU).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import torch

from rl_service.algo.logprobs import token_logprobs
from rl_service.algo.preference import bradley_terry_loss, dpo_loss, sequence_logprobs
from rl_service.config import PreferenceRunConfig
from rl_service.infra.env import free_port
from rl_service.infra.files import write_atomic
from rl_service.learner import fsdp
from rl_service.reward.learned import rm_inputs

_SKIP_FILES = ("model.safetensors", "config.json", "build_info.json")


# ---------------------------------------------------------------- data -> tensors


def encode_texts(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Whole sequences for the reward model: BOS + prompt + completion, right-padded. -> ids, mask: [N, L].
    The same encoding scores rollouts in PPO (`reward.model`, rl_service/reward/learned.py)."""
    return rm_inputs(tokenizer, texts)


def encode_completions(tokenizer, prompts: list[str], completions: list[str]) -> dict[str, torch.Tensor]:
    """BOS + prompt + completion + EOS, right-padded. -> ids, attention_mask, response_mask: [N, L].

    response_mask marks the completion tokens and EOS (what the policy generates), so the
    DPO logprob is the one the policy assigns when it samples this answer.
    """
    rows, resp_starts = [], []
    for p, c in zip(prompts, completions):
        prompt_ids = tokenizer(p).input_ids  # BOS added by the post-processor
        rows.append(prompt_ids + tokenizer(c, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])
        resp_starts.append(len(prompt_ids))
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros(len(rows), L, dtype=torch.long)
    resp = torch.zeros(len(rows), L, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, resp_starts)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        resp[i, s : len(r)] = 1
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


def encode_pairs(kind: str, tokenizer, pairs: list[dict]) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows: every tensor is [2N, L] (row i and N+i are one pair);
    `label_eps` [2N] when the pairs carry their own label smoothing."""
    prompts = [p["prompt"] for p in pairs] * 2
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    if kind == "rm":
        data = encode_texts(tokenizer, [p + c for p, c in zip(prompts, completions)])
        # Completion tokens (digits tokenize one by one, so prompt + completion splits at len(prompt ids)).
        starts = torch.tensor([len(tokenizer(p).input_ids) for p in prompts])
        cols = torch.arange(data["input_ids"].shape[1])
        data["response_mask"] = ((cols[None, :] >= starts[:, None]) & (data["attention_mask"] > 0)).long()
    else:
        data = encode_completions(tokenizer, prompts, completions)
    if any("label_eps" in p for p in pairs):  # preference.noise=annotators: a smoothing per pair
        data["label_eps"] = torch.tensor([float(p.get("label_eps", 0.0)) for p in pairs] * 2)
    return data


def _rows(data: dict[str, torch.Tensor], idx: torch.Tensor, n_pairs: int, device) -> dict[str, torch.Tensor]:
    """The chosen and rejected rows of pairs `idx` ([k]) -> [2k, L], trimmed to the longest row."""
    rows = torch.cat([idx, idx + n_pairs])
    out = {k: v[rows] for k, v in data.items()}
    L = int(out["attention_mask"].sum(-1).max())
    return {k: (v[:, :L] if v.dim() == 2 else v).to(device) for k, v in out.items()}


# ---------------------------------------------------------------- per-pair scores


def rm_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Reward of each row: [2k, L] -> [2k] (HF pools the last non-pad token)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()


class RewardModelWithLM(torch.nn.Module):
    """train-rm with `preference.rm_lm_coef > 0`: the reward model and the policy's LM head on
    one backbone, so the chosen answers also train next-token prediction (an auxiliary SFT loss
    that keeps the hidden states able to compute the answer; cf. Yang et al. 2024, "Regularizing
    hidden states enables learning generalizable reward models"). Only `rm` is saved."""

    def __init__(self, rm, lm_head: torch.nn.Module):
        super().__init__()
        self.rm, self.lm_head = rm, lm_head

    @property
    def base_model(self):  # the backbone, as on an HF model
        return self.rm.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> scores [N] (at the last real token of each right-padded row, as HF pools), logits [N, L, V]."""
        h = self.rm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [N, L, H]
        last = attention_mask.sum(-1) - 1
        scores = self.rm.score(h[torch.arange(h.shape[0], device=h.device), last])[:, 0].float()
        return scores, self.lm_head(h)


def chosen_lm_nll(logits: torch.Tensor, batch: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Mean next-token NLL of each chosen completion: logits [2k, L, V] (rows < k are chosen) -> [k]."""
    tok = token_logprobs(logits[:k, :-1], batch["input_ids"][:k, 1:])  # [k, L-1]
    mask = batch["response_mask"][:k, 1:].float()
    return -(tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def completion_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed logprob of each row's completion + EOS: [2k, L] -> [2k]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [2k, L, V]
    tok = token_logprobs(logits[:, :-1], batch["input_ids"][:, 1:])  # [2k, L-1]
    return sequence_logprobs(tok, batch["response_mask"][:, 1:])


def pair_loss(kind: str, models: dict, batch, cfg, denom: float) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss, metrics) of k pairs; batch rows [2k, L] are the k chosen then the k rejected."""
    pc = cfg.preference
    k = batch["input_ids"].shape[0] // 2
    eps = batch["label_eps"][:k] if "label_eps" in batch else pc.label_smoothing
    if kind == "rm":
        model = models["train"]
        if not isinstance(model, RewardModelWithLM):
            r = rm_scores(model, batch)
            k = r.shape[0] // 2
            return bradley_terry_loss(r[:k], r[k:], margin=pc.margin, label_smoothing=eps, denom=denom)
        r, logits = model(batch["input_ids"], batch["attention_mask"])
        k = r.shape[0] // 2
        loss, m = bradley_terry_loss(r[:k], r[k:], margin=pc.margin, label_smoothing=eps, denom=denom)
        nll = chosen_lm_nll(logits, batch, k)  # [k]; summed / GLOBAL pair count, like the BT loss
        m["lm_loss"] = float(nll.detach().mean()) if k else 0.0
        return loss + pc.rm_lm_coef * nll.sum() / denom, m
    lp = completion_logprobs(models["train"], batch)
    with torch.no_grad():
        ref = completion_logprobs(models["reference"], batch)
    k = lp.shape[0] // 2
    loss, m = dpo_loss(lp[:k], lp[k:], ref[:k], ref[k:], beta=pc.beta, label_smoothing=eps, denom=denom)
    m["logp_accuracy"] = float((lp[:k] > lp[k:]).float().mean())  # the policy itself prefers chosen
    return loss, m


@torch.no_grad()
def evaluate(kind: str, models: dict, data, n_pairs: int, cfg, device, chunk: int = 256) -> dict[str, float]:
    """Held-out metrics over all pairs (same on every rank), weighted by chunk size."""
    totals: dict[str, float] = {}
    for s in range(0, n_pairs, chunk):
        idx = torch.arange(s, min(s + chunk, n_pairs))
        _, m = pair_loss(kind, models, _rows(data, idx, n_pairs, device), cfg, denom=float(len(idx)))
        for key, v in m.items():
            totals[key] = totals.get(key, 0.0) + v * len(idx)
    return {f"eval/{k}": v / max(n_pairs, 1) for k, v in totals.items()}


# ---------------------------------------------------------------- one rank


def rm_config(model_path: str, extra_layers: int):
    """The policy's config as a 1-output sequence classifier with `extra_layers` more blocks."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, num_labels=1, classifier_dropout=0.0)
    config.num_hidden_layers += extra_layers
    return config


def _load_models(kind: str, model_path: str, device, mesh, extra_layers: int = 0, lm_coef: float = 0.0) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind == "rm":
        config = rm_config(model_path, extra_layers)
        rm = AutoModelForSequenceClassification.from_pretrained(model_path, config=config, dtype=torch.float32)
        # Optional added blocks start as the identity (zero output projections): at step 0 the
        # score head reads exactly the policy's final hidden state (an experiment: a block on
        # top could compare each token with the policy's prediction for it; no gain measured yet).
        with torch.no_grad():
            for layer in rm.base_model.layers[config.num_hidden_layers - extra_layers :]:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
        if lm_coef > 0:  # the policy's own LM head, trained alongside and then dropped
            lm_head = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).lm_head
            rm = RewardModelWithLM(rm, lm_head)
        models = {"train": rm}
    else:
        policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        models = {"train": policy, "reference": copy.deepcopy(policy).requires_grad_(False)}
    for m in models.values():
        m.to(device).eval()  # no dropout: the reference and the policy must agree at step 0
        fsdp.shard(m, mesh)
    return models


def _save(kind: str, model, tokenizer, model_path: str, out: Path, rank: int, extra_layers: int = 0) -> None:
    """Collective gather; rank 0 writes a plain HF directory plus the tokenizer files."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    state_dict = fsdp.full_state_dict(model)
    if isinstance(model, RewardModelWithLM):  # keep the reward model only
        state_dict = {k.removeprefix("rm."): v for k, v in state_dict.items() if k.startswith("rm.")}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for f in Path(model_path).iterdir():
            if f.is_file() and f.name not in _SKIP_FILES:
                shutil.copy2(f, out / f.name)
        if kind == "rm":
            plain = AutoModelForSequenceClassification.from_config(
                rm_config(model_path, extra_layers), dtype=torch.float32
            )
        else:
            plain = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), dtype=torch.float32)
        plain.load_state_dict(state_dict, strict=True)
        plain.save_pretrained(out)
    fsdp.barrier()


def run_rank(
    rank: int,
    world_size: int,
    port: int,
    kind: str,
    cfg: PreferenceRunConfig,
    model_path: str,
    train_pairs: list[dict],
    eval_pairs: list[dict],
    out_dir: str,
) -> None:
    """Body of one process (rank 0 writes metrics.jsonl, summary.json and model/)."""
    from transformers import AutoTokenizer

    pc = cfg.preference
    torch.set_num_threads(pc.threads)
    backend = fsdp.resolve_backend(pc.backend)
    device, mesh = fsdp.init_distributed(backend, rank, world_size, "127.0.0.1", port)
    try:
        torch.manual_seed(cfg.seed)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        train_data, eval_data = encode_pairs(kind, tokenizer, train_pairs), encode_pairs(kind, tokenizer, eval_pairs)
        extra_layers = pc.rm_extra_layers if pc.type == "rm" else 0
        models = _load_models(kind, model_path, device, mesh, extra_layers, pc.rm_lm_coef if pc.type == "rm" else 0.0)
        opt = torch.optim.AdamW(models["train"].parameters(), lr=pc.lr, weight_decay=pc.weight_decay)
        warmup = max(1, pc.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        out = Path(out_dir)
        log = (out / "metrics.jsonl").open("a") if rank == 0 else None
        n_train, n_eval, B = len(train_pairs), len(eval_pairs), min(pc.batch_size, len(train_pairs))
        gen = torch.Generator().manual_seed(cfg.seed)
        order, pos, t0 = torch.randperm(n_train, generator=gen), 0, time.perf_counter()
        start = evaluate(kind, models, eval_data, n_eval, cfg, device)
        history = [{"step": 0, **start}]
        last_train: dict[str, float] = {}
        for step in range(1, pc.steps + 1):
            if pos + B > n_train:  # new epoch: same permutation on every rank (same generator)
                order, pos = torch.randperm(n_train, generator=gen), 0
            idx = order[pos : pos + B][rank::world_size]
            pos += B
            models["train"].train(False)
            loss, m = pair_loss(kind, models, _rows(train_data, idx, n_train, device), cfg, denom=float(B))
            opt.zero_grad(set_to_none=True)
            (loss * world_size).backward()  # FSDP2 averages grads over ranks; the loss is a global sum / B
            grad_norm = fsdp.clip_grad_norm(models["train"], pc.max_grad_norm)
            opt.step()
            sched.step()
            vec = fsdp.all_reduce_sum(torch.tensor([m["loss"], m["accuracy"]], dtype=torch.float64)) / world_size
            last_train = {"train/loss": float(vec[0]), "train/accuracy": float(vec[1]), "train/grad_norm": grad_norm}
            row = {"step": step, **last_train, "time_s": round(time.perf_counter() - t0, 2)}
            if step % pc.eval_every == 0 or step == pc.steps:
                row.update(evaluate(kind, models, eval_data, n_eval, cfg, device))
                history.append({k: v for k, v in row.items() if k == "step" or k.startswith("eval/")})
                if rank == 0:
                    print(
                        f"[{kind}] step {step}: train loss {row['train/loss']:.4f}, held-out accuracy "
                        f"{row['eval/accuracy']:.3f} ({row['time_s']:.0f} s)",
                        flush=True,
                    )
            if log is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
        train_s = time.perf_counter() - t0
        _save(kind, models["train"], tokenizer, model_path, out / "model", rank, extra_layers)
        if rank == 0:
            end = history[-1]
            if kind == "dpo":  # what DPO is for: does the policy now answer more prompts right?
                last_train.update(_greedy_accuracy(cfg, model_path, out / "model"))
            summary = {
                "kind": kind,
                "steps": pc.steps,
                "num_workers": world_size,
                "train_pairs": n_train,
                "eval_pairs": n_eval,
                "train_s": round(train_s, 2),
                "model_dir": str(out / "model"),
                **{f"{k}_start": v for k, v in start.items()},
                **{f"{k}_end": v for k, v in end.items() if k != "step"},
                **last_train,
            }
            write_atomic(out / "summary.json", json.dumps(summary, indent=2))
            log.close()
    finally:
        fsdp.destroy()


def _greedy_accuracy(cfg: PreferenceRunConfig, start_dir: str, end_dir: Path) -> dict[str, float]:
    """Held-out greedy exact match of the addition task before and after (plain HF models, rank 0)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_service.models.evaluate import greedy_accuracy_hf
    from rl_service.tasks.addition import AdditionTask

    problems = AdditionTask(cfg.task).eval_problems
    tokenizer = AutoTokenizer.from_pretrained(start_dir)
    out = {}
    for key, d in (("task/exact_match_start", start_dir), ("task/exact_match_end", end_dir)):
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        out[key] = greedy_accuracy_hf(model, tokenizer, problems, max_new_tokens=2 * cfg.task.digits + 2)
    return out


def train_preferences(
    kind: str,
    cfg: PreferenceRunConfig,
    model_path: str,
    train_pairs: list[dict],
    eval_pairs: list[dict],
    out_dir: str | Path,
) -> dict:
    """Train a reward model (`rm`) or a DPO policy (`dpo`); returns summary.json's content."""
    if kind not in ("rm", "dpo"):
        raise ValueError(f"kind must be 'rm' or 'dpo', got {kind!r}")
    if cfg.preference.type != kind:
        raise ValueError(f"train-{kind} needs preference.type {kind!r}, got {cfg.preference.type!r}")
    world = cfg.preference.num_workers
    if not train_pairs or not eval_pairs:
        raise ValueError(f"need training and held-out pairs (got {len(train_pairs)} and {len(eval_pairs)})")
    if min(cfg.preference.batch_size, len(train_pairs)) < world:
        raise ValueError("preference.batch_size must be >= preference.num_workers (every process needs pairs)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = (world, free_port(), kind, cfg, str(model_path), train_pairs, eval_pairs, str(out))
    if world == 1:
        run_rank(0, *args)
    else:
        import torch.multiprocessing as mp

        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.preference.threads))
        mp.spawn(run_rank, nprocs=world, args=args, join=True)
    return json.loads((out / "summary.json").read_text())
