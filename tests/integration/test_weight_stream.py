"""rollout.weight_sync=collective in a real run (tiny model, real vLLM workers, 2 FSDP2 learners,
one Ray session): every step's workers pass the probe check, and with max_policy_lag 0 the final
weights equal the object-store run's (same seed) -- the streamed weights are the ones the workers
generated with. (With lag >= 1 the swap is deferred and the run is not deterministic, so it has
no twin to compare with; the probe check still guards every load there.)"""

import json
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import REPO

STEPS = 3


def _cfg(tmp_path: Path, model_dir: Path, name: str, *overrides: str):
    from rl_service.config import load_config

    return load_config(
        REPO / "configs" / "ci" / "tiny.yaml",
        [
            f"name={name}",
            f"run_root={tmp_path}",
            f"model.path={model_dir}",
            f"train.steps={STEPS}",
            "train.eval_every=0",
            "task.num_eval=16",
            "rollout.num_workers=2",  # the stream goes to several workers
            f"reward.fn={Path(__file__).parent / 'partial_credit.py'}:leading_digits",  # a reward signal
            *overrides,
        ],
    )


def _run(cfg, tmp_path: Path) -> tuple[list[dict], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    from rl_service.controller.loop import train

    run_dir = tmp_path / cfg.name
    run_dir.mkdir(parents=True)
    train(cfg, run_dir, cfg.model.path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = {}
    for f in sorted((run_dir / "final").glob("*.safetensors")):
        final.update(load_file(f))
    return rows, final


@pytest.mark.slow
def test_streamed_sync_matches_the_object_store_run(tmp_path, tiny_model_dir):
    from rl_service.infra.session import ray_session

    base = _cfg(tmp_path, tiny_model_dir, "object-store", "train.max_policy_lag=0")
    with ray_session(base):
        store_rows, store_final = _run(base, tmp_path)
        cfg = _cfg(tmp_path, tiny_model_dir, "collective", "train.max_policy_lag=0", "rollout.weight_sync=collective")
        rows, final = _run(cfg, tmp_path)
    tol = cfg.rollout.verify_tolerance
    assert [r["policy_version"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:  # lag 0: each step's own load, verified on every worker
        assert r["weight_sync/probe_max_diff"] <= tol and r["timing_s/load"] > 0
        assert r["policy/lag_mean"] == 0
    assert sorted(final) == sorted(store_final)
    worst = max((final[k] - store_final[k]).abs().max().item() for k in final)
    moved = max((final[k] - v).abs().max().item() for k, v in _start_weights(tiny_model_dir).items())
    assert moved > 1e-4, "training did not change the weights: the comparison would prove nothing"
    assert worst <= 1e-6, f"final weights differ from the object-store run's by {worst:.2e}"
    assert [r["reward/mean"] for r in rows] == [r["reward/mean"] for r in store_rows]
    assert any(r["reward/std"] > 0 for r in rows), "no reward signal: the rollouts carry no weight information"


def _start_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out
