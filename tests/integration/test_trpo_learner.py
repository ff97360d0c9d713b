"""learner.optimizer=trpo on the real learner (one gloo process, the tiny model, a GAE critic).

Two updates of one learner on hand-made batches: every accepted step keeps the line search's KL
within trpo.max_kl with a surrogate gain, the critic trains; the weights published after the
first step, recomputed with plain transformers, give the KL the learner reported (<= max_kl);
and a trust region 100x smaller gives a step 10x shorter (the step scales with sqrt(max_kl)).
Config refusals: TRPO on 2 processes / with packing, one line.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rl_service.config import LearnerConfig
from rl_service.infra.env import free_port
from tests.integration.test_fsdp_learner import GROUP, PROBES, _batches


def _config(max_kl: float) -> LearnerConfig:
    return LearnerConfig(
        num_workers=1,
        backend="gloo",
        optimizer="trpo",
        trpo={"max_kl": max_kl, "cg_iters": 10, "fvp_fraction": 0.5},
        advantage={"type": "gae", "critic_lr": 5e-3},
        micro_batch_size=8,
        kl={"estimator": "k1", "placement": "reward", "coef": 0.0},
        behavior_logprobs="learner",
    )


def _learn(rank: int, model_dir: str, out: str) -> None:
    from rl_service.learner.learner import Learner

    batches, result = _batches(Path(model_dir)), {}
    for max_kl in (0.01, 0.0001):
        learner = Learner(_config(max_kl), model_dir, 0, 1, "127.0.0.1", free_port(), seed=0)
        try:
            learner.setup()
            first = learner.train_step(batches, GROUP)
            _, state_dict = learner.publish(1, PROBES)  # the weights after exactly one step
            second = learner.train_step(batches, GROUP)
            result[max_kl] = {"steps": [first, second], "state_dict": state_dict}
        finally:
            learner.shutdown()
    torch.save(result, Path(out) / "trpo.pt")


@pytest.fixture(scope="module")
def learned(tiny_model_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("trpo")
    ctx = mp.spawn(_learn, nprocs=1, join=False, args=(str(tiny_model_dir), str(out)))
    while not ctx.join():
        pass
    return torch.load(out / "trpo.pt", weights_only=False)


def _response_logprobs(model_dir: Path, state_dict: dict | None) -> list[torch.Tensor]:
    """Each sample's response-token logprobs under `state_dict` (None: the initial weights)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    out = []
    with torch.no_grad():
        for batch in _batches(model_dir):
            for s in batch.samples:
                ids = torch.tensor([list(s.prompt_ids) + list(s.response_ids)])
                lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
                out.append(lp[len(s.prompt_ids) - 1 :])
    return out


def test_every_accepted_step_stays_inside_the_trust_region(learned, tiny_model_dir):
    for max_kl, res in learned.items():
        for m in res["steps"]:
            assert m["trpo/accepted"] == 1.0 and m["train/optimizer_steps"] == 1.0, (max_kl, m)
            assert 0 < m["policy/approx_kl"] <= max_kl and m["trpo/surrogate_gain"] > 0, (max_kl, m)
            assert m["trpo/surrogate_gain"] >= 0.1 * m["trpo/step_frac"] * m["trpo/expected_gain"]
            assert math.isfinite(m["loss/value"]) and m["train/skipped_steps"] == 0
    # independently, with plain transformers: the first step's KL on the batch's response tokens
    # (what the line search bounds: k3 of the new vs the old logprobs) is the one it reported
    initial = _response_logprobs(tiny_model_dir, None)
    for max_kl, res in learned.items():
        after = _response_logprobs(tiny_model_dir, res["state_dict"])
        log_r = torch.cat([a - i for a, i in zip(after, initial)])
        k3 = float((torch.expm1(log_r) - log_r).mean())
        assert k3 == pytest.approx(res["steps"][0]["policy/approx_kl"], rel=1e-3, abs=1e-7), (max_kl, k3)
        assert 0 < k3 <= max_kl


def test_a_smaller_trust_region_takes_a_proportionally_smaller_step(learned):
    wide, narrow = learned[0.01]["steps"][0], learned[0.0001]["steps"][0]
    # the full step is sqrt(2 max_kl / x F x) x: 100x the KL bound -> 10x the length
    ratio = wide["trpo/full_step_norm"] / narrow["trpo/full_step_norm"]
    assert ratio == pytest.approx(10.0, rel=1e-3), ratio
    assert narrow["policy/approx_kl"] < wide["policy/approx_kl"]


@pytest.mark.parametrize(
    "extra, words",
    [({"num_workers": 2}, "learner.num_workers > 1"), ({"max_tokens_per_microbatch": 512}, "packing")],
)
def test_trpo_refuses_what_it_cannot_run_in_one_line(extra, words):
    with pytest.raises(ValueError, match="optimizer=trpo runs on one unsharded learner process") as err:
        LearnerConfig(optimizer="trpo", **extra)
    assert words in str(err.value) and "\n" not in str(err.value).split("\n", 1)[0]
