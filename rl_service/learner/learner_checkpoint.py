"""The PPO learner's checkpoint: what `Learner.save_checkpoint` / `load_checkpoint` write and read.

    save(learner, dir)   sharded policy / critic / optimizers (torch.distributed.checkpoint) under
                         dir/learner, and each rank's small state in dir/learner_rank<r>.pt
    load(learner, dir)   the same back, exactly (collective, after setup); a checkpoint from a
                         different number of learner processes loads too (DCP reshards)

With LoRA the policy's state holds its adapters and the AdamW state holds theirs only.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rl_service.learner import fsdp
from rl_service.learner.checkpoint_io import check_dcp_metadata, read_local_state


def dcp_state(learner) -> dict:
    """Sharded (DTensor) state of the trainable models and their optimizers, DCP's input."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    m = learner.models
    state = dict(zip(("policy", "policy_opt"), get_state_dict(m.policy, learner.policy_opt)))
    if m.critic is not None:
        state.update(zip(("critic", "critic_opt"), get_state_dict(m.critic, learner.critic_opt)))
    return state


def local_state(learner) -> dict:
    """What DCP does not shard: identical on every rank except the RNG states."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and learner.models.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(learner.models.device)
    return {
        "step": learner.step,
        "nan_streak": learner.nan_streak,
        "kl_ctl": learner.kl_ctl.state_dict(),
        "policy_sched": learner.policy_sched.state_dict(),
        "rng": rng,
        "world_size": learner.world_size,
    }


def save(learner, ckpt_dir: str) -> dict:
    """Write policy, critic, optimizers (sharded, torch.distributed.checkpoint) and the small
    per-rank state into `ckpt_dir` (collective; returns once every rank has written)."""
    import torch.distributed.checkpoint as dcp

    assert learner.models is not None, "call setup() first"
    t0 = time.perf_counter()
    out = Path(ckpt_dir)
    dcp.save(dcp_state(learner), checkpoint_id=str(out / "learner"))
    torch.save(local_state(learner), out / f"learner_rank{learner.rank}.pt")
    fsdp.barrier()
    return {"step": learner.step, "seconds": time.perf_counter() - t0}


def load(learner, ckpt_dir: str) -> dict:
    """Restore everything save_checkpoint wrote (collective, after setup()). A checkpoint
    from a different number of learner processes loads too (DCP reshards); RNG states
    then come from rank 0's file."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    assert learner.models is not None, "call setup() first"
    src = Path(ckpt_dir)
    state = dcp_state(learner)  # templates (optimizer states initialised) that DCP fills in place
    check_dcp_metadata(src / "learner")  # DCP unpickles it as is: nothing but its own classes
    dcp.load(state, checkpoint_id=str(src / "learner"))
    set_state_dict(
        learner.models.policy,
        learner.policy_opt,
        model_state_dict=state["policy"],
        optim_state_dict=state["policy_opt"],
    )
    if learner.models.critic is not None:
        set_state_dict(
            learner.models.critic,
            learner.critic_opt,
            model_state_dict=state["critic"],
            optim_state_dict=state["critic_opt"],
        )
    local_file = src / f"learner_rank{learner.rank}.pt"
    local = read_local_state(local_file if local_file.is_file() else src / "learner_rank0.pt")
    learner.step, learner.nan_streak = int(local["step"]), int(local["nan_streak"])
    learner.kl_ctl.load_state_dict(local["kl_ctl"])
    learner.policy_sched.load_state_dict(local["policy_sched"])
    torch.set_rng_state(local["rng"]["torch"])
    if "cuda" in local["rng"] and learner.models.device.type == "cuda":
        torch.cuda.set_rng_state(local["rng"]["cuda"], learner.models.device)
    fsdp.barrier()
    return {"step": learner.step, "kl_coef": float(learner.kl_ctl.value)}
