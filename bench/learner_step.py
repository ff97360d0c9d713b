"""learner_step: one PPO/GRPO update of the FSDP2 learner alone, its defaults vs "lean".

No Ray, no engines: `Learner.train_step` in spawned processes (gloo), on a fixed synthetic
batch shaped like e2e_trl's (16 prompts x 8 completions of 3-5 tokens after a 6-token
prompt, 0/1 rewards), GRPO, one optimizer step per update, `kl.coef` 0. Variants:

- defaults: the learner recomputes the old policy's logprobs (`logprob_check_every: 1`) and
  runs the reference model (`kl.measure_every: 1`) before the update;
- lean: `logprob_check_every: 0`, `kl.measure_every: 0` -- one forward + backward, the work
  TRL's GRPOTrainer does with beta=0 and num_iterations=1.

Each on 2 ranks x 1 thread (the e2e layout's learner) and on 1 rank x 2 threads. Figure:
median wall time of `train_step` over the updates after the first (warm-up), and the publish
(full-state-dict gather + checksum + probe) once at the end. Layouts alternate inside each
round, so drift hits every variant alike.
"""

from __future__ import annotations

import random

from bench.common import alternate, env_sized, log, median, medians, pair_ratios, table

FULL = dict(size="30m", prompts=16, group=8, updates=5, rounds=2)
QUICK = dict(size="test", prompts=4, group=4, updates=2, rounds=1)
LAYOUTS = {"2x1": (2, 1), "1x2": (1, 2)}  # ranks x threads per rank


def _batches(prompts: int, group: int):
    from rl_service.types import Sample, ScoredBatch

    rng = random.Random(0)
    out = []
    for b in range(2):  # two scored batches per update, as with rollout.prompts_per_batch = prompts / 2
        samples, rewards = [], []
        for p in range(prompts // 2):
            pid = b * (prompts // 2) + p
            prompt = tuple([1] + [rng.randrange(3, 20) for _ in range(5)])
            for k in range(group):
                resp = tuple(rng.randrange(3, 20) for _ in range(rng.randint(2, 4))) + (2,)
                samples.append(
                    Sample(
                        sample_id=f"{pid}/{k}",
                        prompt_id=pid,
                        prompt_text="x",
                        prompt_ids=prompt,
                        response_ids=resp,
                        response_logprobs=tuple(-1.0 for _ in resp),
                        response_text="x",
                        policy_version=0,
                        finish_reason="stop",
                    )
                )
                rewards.append(float(rng.random() < 0.5))
        out.append(
            ScoredBatch(
                batch_id=b,
                samples=tuple(samples),
                rewards=tuple(rewards),
                dropped=(),
                policy_version=0,
                generate_s=0.0,
                reward_s=0.0,
            )
        )
    return out


def _one(model: str, s: dict, layout: str, lean: bool) -> dict:
    from bench.standalone import time_learner
    from rl_service.config import LearnerConfig

    world, threads = LAYOUTS[layout]
    every = 0 if lean else 1
    cfg = LearnerConfig(
        num_workers=world,
        backend="gloo",
        advantage="grpo",
        lr=5e-5,
        logprob_check_every=every,
        kl={"coef": 0.0, "measure_every": every},
    )
    got = time_learner(cfg, model, _batches(s["prompts"], s["group"]), s["group"], world, threads, s["updates"])
    return {
        "layout": layout,
        "variant": "lean" if lean else "defaults",
        **{k: got[k] for k in ("train_step_s", "publish_s", "all_s")},
    }


def run(quick: bool) -> dict:
    from bench.models import warm_model

    s = QUICK if quick else env_sized(FULL)
    model = str(warm_model(s["size"]))
    log(f"learner_step: model {model}, {s}")
    sides = {
        f"{layout}-{v}": (lambda i, layout=layout, lean=(v == "lean"): _one(model, s, layout, lean))
        for layout in LAYOUTS
        for v in ("defaults", "lean")
    }
    runs = alternate(s["rounds"], sides)
    med = medians(runs, ["train_step_s", "publish_s"])
    ratios = {layout: pair_ratios(runs, "train_step_s", f"{layout}-lean", f"{layout}-defaults") for layout in LAYOUTS}
    return {
        "settings": {**s, "model": model, "samples_per_update": s["prompts"] * s["group"]},
        "runs": runs,
        "medians": med,
        "pair_ratios_lean_over_defaults": ratios,
        "median_ratios_lean_over_defaults": {k: median(v) for k, v in ratios.items()},
    }


def markdown(result: dict) -> str:
    s, med, r = result["settings"], result["medians"], result["median_ratios_lean_over_defaults"]
    rows = [[side, m["train_step_s"], m["publish_s"]] for side, m in med.items()]
    return (
        f"GRPO update of {s['samples_per_update']} sequences (~10 tokens) on the {s['size']} model, "
        f"{s['updates']} updates per run (median after the first), {s['rounds']} rounds; "
        "side = ranks x threads - variant\n\n"
        + table(["side", "train_step s (median)", "publish s"], rows)
        + "\n\nlean / defaults (median of per-round ratios): "
        + ", ".join(f"{k} {v:.2f}x" for k, v in r.items() if v is not None)
    )
