"""GPU path: the FSDP2 learner on NCCL and the HF engine on CUDA, verified against each other.

Skipped where no CUDA device exists (this CPU machine); run on a lent GPU machine with
`python -m pytest tests/gpu -q` (it has torch + transformers, no vLLM).
"""

from __future__ import annotations

import pytest
import torch

from rl_service.infra.env import free_port

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_nccl_learner_step_and_verified_sync_into_cuda_hf_engine(tiny_model_dir):
    from rl_service.config import LearnerConfig
    from rl_service.learner.learner import Learner
    from rl_service.reward.functions import addition_exact
    from rl_service.rollout.engine import HFEngine
    from rl_service.rollout.weight_sync import max_probe_diff, state_dict_checksum
    from rl_service.types import Sample, ScoredBatch

    engine = HFEngine(str(tiny_model_dir), device="cuda", seed=0)
    prompts = [f"{a}+{b}=" for a, b in [(12, 30), (7, 8), (45, 45), (99, 1)]]
    outs = engine.generate(prompts, n=4, max_new_tokens=5, temperature=1.0, seed=0)
    samples, rewards = [], []
    for pid, (p, group) in enumerate(zip(prompts, outs)):
        a, b = p[:-1].split("+")
        for k, c in enumerate(group):
            samples.append(
                Sample(
                    f"{pid}/{k}",
                    pid,
                    p,
                    c.prompt_ids,
                    c.token_ids,
                    c.logprobs,
                    c.text,
                    0,
                    c.finish_reason,
                    {"answer": str(int(a) + int(b))},
                )
            )
            rewards.append(addition_exact(p, c.text, answer=str(int(a) + int(b))) + 0.1 * len(c.text))
    batch = ScoredBatch(0, tuple(samples), tuple(rewards), (), 0, 0.0, 0.0)

    learner = Learner(
        LearnerConfig(num_workers=1, backend="nccl", resources={"num_gpus": 1}, lr=1e-3),
        str(tiny_model_dir),
        0,
        1,
        "127.0.0.1",
        free_port(),
        seed=0,
    )
    info = learner.setup()
    assert info["backend"] == "nccl" and info["device"].startswith("cuda")
    try:
        metrics = learner.train_step([batch], group_size=4)
        assert metrics["train/optimizer_steps"] >= 1
        # fp32 on GPU: the engine's sampling logprobs match the learner's recomputation.
        assert metrics["rollout/logprob_diff_max"] < 1e-3
        probes = [list(s.prompt_ids + s.response_ids) for s in samples[:3]]
        meta, state = learner.publish(1, probes)
        assert meta.checksum == state_dict_checksum(state)
        engine.load_weights(state, 1)
        assert max_probe_diff(meta.probe_logprobs, engine.score(probes)) < 1e-4
    finally:
        learner.shutdown()
