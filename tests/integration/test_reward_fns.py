"""reward.fns in a real RewardScorer actor: Ray runs its methods in threads (max_concurrency=2,
as the run places it), where math-verify's signal timeout would fail; the batch comes back
scored with each entry's part, and the summary carries their sums."""

import ray

from rl_service.config import Config
from rl_service.infra.placement import make_scorer
from rl_service.types import BatchSummary, RolloutBatch, Sample

FORMAT = r".*\\boxed\{.*\}.*"


def _batch(texts: list[str], answers: list[str]) -> RolloutBatch:
    samples = tuple(
        Sample(f"{i}/0", i, "q", (1,), (2,), (-0.1,), t, 0, "stop", {"answer": a, "id": f"row-{i}"})
        for i, (t, a) in enumerate(zip(texts, answers))
    )
    return RolloutBatch(batch_id=3, samples=samples, worker="rollout-0", policy_version=0, generate_s=0.0)


OFF_MAIN = """
import threading
def off_main_thread(prompt, completion, **meta):
    return float(threading.current_thread() is not threading.main_thread())
"""


def test_scorer_actor_scores_fns_with_math_verify_in_a_thread(tmp_path, session_ray):
    (tmp_path / "where.py").write_text(OFF_MAIN)
    cfg = Config.model_validate(
        {
            "learner": {"advantage": "gae"},
            "reward": {
                "resources": {"num_cpus": 0.5},
                "fns": [
                    {"fn": "regex_format", "weight": 0.2, "args": {"pattern": FORMAT}, "name": "boxed"},
                    {"fn": "math_verify"},
                    {"fn": f"{tmp_path / 'where.py'}:off_main_thread", "weight": 0.0},
                ],
            },
        }
    )
    batch = _batch([r"so \boxed{\frac{1}{2}}", "0.5", r"\boxed{3}"], ["0.5", r"$\frac{1}{2}$", "4"])
    scorer = make_scorer(cfg, 0)
    try:
        scored = ray.get(scorer.score.remote(batch), timeout=120)
    finally:
        ray.kill(scorer)
    assert scored.dropped == ()
    assert scored.reward_parts["off_main_thread"] == (1.0, 1.0, 1.0)  # the case math-verify's timeout breaks
    assert scored.reward_parts["boxed"] == (1.0, 0.0, 1.0) and scored.reward_parts["math_verify"] == (1.0, 1.0, 0.0)
    assert scored.rewards == (1.2, 1.0, 0.2)
    assert BatchSummary.of(scored).reward_part_sums == {"boxed": 2.0, "math_verify": 2.0, "off_main_thread": 3.0}
