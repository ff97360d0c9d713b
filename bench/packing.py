"""packing: the learner's policy forward + backward on one batch, padded vs packed vs shared-prompt.

No Ray, no FSDP: `policy_logprobs` (rl_service/learner/forward.py) and a backward of the
masked logprob sum, in this process (2 threads), on a random-init model of the benchmark's
`30m` shape (bench/models.py SHAPES; the compute per token is a trained model's). Sides:

- padded: the default learner path, micro-batches of `micro_batch_size` rows (default 256: the
  whole batch as one padded [B, T] forward: large activations, watch the machine's memory);
- padded16: the same with micro_batch_size 16 (each micro-batch padded to its own longest row);
- packed: learner.max_tokens_per_microbatch (rows back to back, segment attention);
- shared: packed + learner.share_prompt (each group's prompt computed once).

Two batch shapes: `spread` (groups of 8, prompts 20-60 tokens, completions 4..256 tokens
uniformly spread) and `shared_prompt` (groups of 8 after a >= 200-token prefix common to every
prompt, completions 4..128). Figure: wall seconds of the whole batch's forward + backward, the
median over rounds (the sides alternate inside each round); tokens computed per side.
"""

from __future__ import annotations

import os
import random
import time

import torch

from bench.common import alternate, env_sized, log, median, medians, pair_ratios, table

SIDES = ("padded", "padded16", "packed", "shared")
FULL = dict(size="30m", prompts=16, group=8, budget=4096, rounds=2, sides=SIDES)
QUICK = dict(size="test", prompts=2, group=4, budget=512, rounds=1, sides=SIDES)
SHAPES = {
    "spread": dict(prefix=0, prompt=(20, 60), completion=(4, 256)),
    "shared_prompt": dict(prefix=200, prompt=(10, 30), completion=(4, 128)),
}


def _model(size: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    from bench.models import SHAPES as MODEL_SHAPES

    s = MODEL_SHAPES[size]
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=64,  # the addition tokenizer's size class; the lm_head is not what is measured
        hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_layers"],
        num_attention_heads=s["num_heads"],
        num_key_value_heads=s["num_heads"],
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return AutoModelForCausalLM.from_config(cfg).float().eval()


def _batch(shape: dict, prompts: int, group: int):
    """input_ids, attention_mask [B, T], response mask [B, T-1], PromptGroups."""
    from rl_service.algo.segments import prompt_groups

    rng = random.Random(0)
    prefix = [rng.randrange(3, 60) for _ in range(shape["prefix"])]
    seqs, prompt_ids, runs = [], [], []
    for _ in range(prompts):
        p = prefix + [rng.randrange(3, 60) for _ in range(rng.randint(*shape["prompt"]))]
        runs.append(list(range(len(seqs), len(seqs) + group)))
        for _ in range(group):
            prompt_ids.append(p)
            seqs.append(p + [rng.randrange(3, 60) for _ in range(rng.randint(*shape["completion"]))])
    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    am = torch.zeros_like(ids)
    mask = torch.zeros(len(seqs), T - 1)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        am[i, : len(s)] = 1
        mask[i, len(prompt_ids[i]) - 1 : len(s) - 1] = 1
    return ids, am, mask, prompt_groups(prompt_ids, runs)[0]


def _side(model, batch, side: str, budget: int) -> dict:
    from rl_service.learner.batching import plan_micro_batches
    from rl_service.learner.forward import policy_logprobs

    ids, am, mask, groups = batch
    lengths = am.sum(-1).tolist()
    packed, shared = side in ("packed", "shared"), side == "shared"
    share = (groups.group.tolist(), groups.prompt_len.tolist()) if shared else (None, None)
    rows = 16 if side == "padded16" else 256
    plan = plan_micro_batches(range(len(lengths)), 0, 1, rows, budget if packed else None, lengths, *share)
    model.zero_grad(set_to_none=True)
    computed = 0
    t0 = time.perf_counter()
    for mb in plan:
        g = groups.select(mb) if shared else None
        lp, _ = policy_logprobs(model, ids[mb], am[mb], packed=packed, groups=g)
        (lp * mask[mb]).sum().backward()
        computed += int(am[mb].sum()) if packed else len(mb) * max(lengths[i] for i in mb)
    secs = time.perf_counter() - t0
    if shared:
        from rl_service.algo.segments import row_layout

        computed -= sum(
            row_layout([lengths[i] for i in mb], ids.shape[1], groups.select(mb)).shared_tokens for mb in plan
        )
    return {"fwd_bwd_s": secs, "tokens_computed": computed, "micro_batches": len(plan)}


def run(quick: bool) -> dict:
    from rl_service.learner.attention import use_segment_attention

    s = QUICK if quick else env_sized(FULL)
    if os.environ.get("BENCH_SIDES"):  # e.g. "padded16,packed,shared" in a time-boxed session
        s["sides"] = tuple(os.environ["BENCH_SIDES"].split(","))
    torch.set_num_threads(2)
    model = _model(s["size"])
    use_segment_attention(model)  # without a layout (the padded side) it is transformers' sdpa
    log(f"packing: {s}")
    out: dict = {"settings": {**s, "shapes": SHAPES}, "runs": [], "medians": {}, "ratios": {}}
    for name, shape in SHAPES.items():
        batch = _batch(shape, s["prompts"], s["group"])
        sides = {
            side: (lambda i, side=side, batch=batch: _side(model, batch, side, s["budget"])) for side in s["sides"]
        }
        runs = [{**r, "shape": name} for r in alternate(s["rounds"], sides)]
        out["runs"] += runs
        out["medians"][name] = medians(runs, ["fwd_bwd_s", "tokens_computed"])
        out["ratios"][name] = {
            f"{a}/{base}": median(pair_ratios(runs, "fwd_bwd_s", a, base))
            for base in ("padded", "padded16")
            for a in ("packed", "shared")
            if {a, base} <= set(s["sides"])
        }
    return out


def markdown(result: dict) -> str:
    s = result["settings"]
    rows = [
        [shape, side, m["fwd_bwd_s"], int(m["tokens_computed"])]
        for shape, sides in result["medians"].items()
        for side, m in sides.items()
    ]
    ratios = "; ".join(
        f"{shape}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items() if v is not None)
        for shape, r in result["ratios"].items()
    )
    return (
        f"Policy forward + backward of {s['prompts']} prompts x {s['group']} samples on the {s['size']} shape, "
        f"1 process x 2 threads, packed budget {s['budget']} tokens, {s['rounds']} rounds (median)\n\n"
        + table(["shape", "side", "fwd+bwd s", "tokens computed"], rows)
        + f"\n\nTime ratios (median of per-round ratios): {ratios}"
    )
