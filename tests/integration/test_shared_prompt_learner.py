"""learner.share_prompt in the real FSDP2 learner (2 gloo processes): two updates with every
group's prompt computed once leave the weights where the padded learner's two updates do."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from rl_service.config import LearnerConfig
from rl_service.infra.env import free_port
from rl_service.learner.learner import Learner
from rl_service.types import ScoredBatch
from tests.integration.test_fsdp_learner import GROUP, PROBES, _batches, _config
from tests.integration.test_fsdp_learner import model_dir as model_dir  # the fixture


def _two_steps(rank: int, world: int, port: int, model_path: str, cfg: LearnerConfig, batches, out: str) -> None:
    learner = Learner(cfg, model_path, rank, world, "127.0.0.1", port, seed=0)
    try:
        learner.setup()
        metrics = [learner.train_step(batches, GROUP) for _ in range(2)]
        _, state_dict = learner.publish(2, PROBES)
        if rank == 0:
            torch.save({"metrics": metrics, "state_dict": state_dict}, out)
    finally:
        learner.shutdown()


def test_shared_prompts_leave_two_updates_unchanged(model_dir: Path, tmp_path: Path) -> None:
    """GAE (critic values shared too, KL in the reward, entropy bonus), 2 ranks, 2 updates of
    2 epochs x 2 minibatches: shared-prompt packing (groups of 4, one short) vs padded rows."""
    batches: list[ScoredBatch] = _batches(model_dir)
    base = _config("gae").model_copy(update={"num_workers": 2})
    cfgs = {
        "padded": base,
        "shared": base.model_copy(update={"max_tokens_per_microbatch": 64, "share_prompt": True}),
    }
    contexts = {
        name: mp.spawn(
            _two_steps,
            nprocs=2,
            join=False,
            args=(2, free_port(), str(model_dir), cfg, batches, os.path.join(tmp_path, f"{name}.pt")),
        )
        for name, cfg in cfgs.items()
    }
    for ctx in contexts.values():
        while not ctx.join():
            pass
    runs = {name: torch.load(tmp_path / f"{name}.pt", weights_only=False) for name in cfgs}
    from safetensors.torch import load_file

    initial = load_file(str(model_dir / "model.safetensors"))
    padded, shared = runs["padded"]["state_dict"], runs["shared"]["state_dict"]
    diff = max(float((padded[k] - shared[k]).abs().max()) for k in padded)
    moved = max(float((shared[k] - initial[k]).abs().max()) for k in shared)
    print(f"\nmax |padded - shared| = {diff:.3g}, max |trained - initial| = {moved:.3g}")
    assert diff < 1e-5 and moved > 9e-4
    for step in range(2):
        m_pad, m_shared = runs["padded"]["metrics"][step], runs["shared"]["metrics"][step]
        assert m_shared["train/prompt_tokens_shared"] > 0 and m_shared["train/share_refused_groups"] == 0
        for k in ("kl/mean", "value/explained_var", "loss/policy", "loss/value", "entropy/mean"):
            assert abs(m_pad[k] - m_shared[k]) < 1e-5, k
