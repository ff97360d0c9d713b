"""RolloutWorker and RewardScorer bodies, constructed directly (no Ray), wired through the
in-memory queue twin; weight loads are verified by checksum and probe logprobs."""

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from rl_service.algo import token_logprobs
from rl_service.config import RewardConfig, RolloutConfig
from rl_service.infra.queues import LocalQueue
from rl_service.reward.scorer import RewardScorer
from rl_service.rollout.weight_sync import WeightSyncError, state_dict_checksum
from rl_service.rollout.worker import RolloutWorker
from rl_service.types import PolicyVersion, Prompt, PromptBatch


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    cfg = RolloutConfig(engine="hf", samples_per_prompt=3, max_new_tokens=4, num_workers=1)
    return RolloutWorker(cfg, str(tiny_model_dir), seed=1, name="rollout-0")


def prompt_batch(batch_id, start, count=2):
    return PromptBatch(batch_id, tuple(Prompt(start + i, f"{i}+{i}=", {"answer": str(2 * i)}) for i in range(count)))


def test_generate_tags_every_sample(worker):
    out = worker.generate(prompt_batch(5, start=10))
    assert [s.sample_id for s in out.samples] == ["10/0", "10/1", "10/2", "11/0", "11/1", "11/2"]
    assert {s.policy_version for s in out.samples} == {worker.version} == {out.policy_version}
    for s in out.samples:
        assert len(s.response_ids) == len(s.response_logprobs) <= 4
        assert s.metadata["answer"] == str(2 * (s.prompt_id - 10))


def test_pull_push_loop_through_bounded_queues(worker):
    prompt_q, rollout_q, scored_q = LocalQueue(4), LocalQueue(2), LocalQueue(4)
    scorer = RewardScorer(RewardConfig(fn="addition_exact"))
    for b in range(3):
        prompt_q.put(prompt_batch(b, start=100 + 2 * b))
    threads = [
        threading.Thread(target=worker.run, args=(prompt_q, rollout_q)),
        threading.Thread(target=scorer.run, args=(rollout_q, scored_q)),
    ]
    for t in threads:
        t.start()
    got = [scored_q.get_ref(timeout=60) for _ in range(3)]
    worker.stop(), scorer.stop()
    for t in threads:
        t.join(timeout=30)
    worker._stop = False
    summaries = sorted((s for _, s in got), key=lambda s: s.batch_id)
    assert [s.batch_id for s in summaries] == [0, 1, 2]
    assert sorted(sid for s in summaries for sid in s.sample_ids) == sorted(
        f"{p}/{k}" for p in range(100, 106) for k in range(3)
    )
    assert all(r in (0.0, 1.0) for batch, _ in got for r in batch.rewards)


def test_verified_weight_load(worker, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    probe = [1, 5, 6, 7, 8, 9]
    model.load_state_dict(new)
    with torch.no_grad():
        logits = model(torch.tensor([probe])).logits[:, :-1]
    lp = tuple(token_logprobs(logits, torch.tensor([probe[1:]]))[0].tolist())
    meta = PolicyVersion(
        version=7, checksum=state_dict_checksum(new), num_bytes=0, probe_ids=(tuple(probe),), probe_logprobs=(lp,)
    )
    with pytest.raises(WeightSyncError, match="checksum"):
        worker.load_weights(new, PolicyVersion(7, "0" * 64, 0))
    bad_probe = PolicyVersion(7, meta.checksum, 0, meta.probe_ids, (tuple(x + 0.01 for x in lp),))
    with pytest.raises(WeightSyncError, match="probe logprobs differ"):
        worker.load_weights(new, bad_probe)
    info = worker.load_weights(new, meta)
    assert info["version"] == 7 == worker.version
    assert info["probe_max_diff"] < 1e-4
