"""`placement: colocated` on a real run: each learner rank's process hosts a vLLM engine and the
weights are handed over in-process; the run must train exactly what the split mode trains.

Two runs of configs/ci/tiny.yaml (2 learner ranks, lag 0, a partial-credit reward so there is a
signal), one per placement, in this pytest process's Ray. Both sample with the same engine (vLLM,
fp32, one thread per engine in both modes: the learners' and the workers' 0.5 CPU) seeded per
batch id, and each learner sees the same batches in batch-id order, so the samples, and with them
the final weights, must agree. The split run has one rollout worker (a batch's samples do not
depend on which worker takes it; one engine fewer to start keeps the test short).

The colocated run also loses a rank: the last ColocatedRank (learner and engine in one process) is
killed while it trains step 2 (the fault plan). That is a learner failure: the attempt restarts
from the step-1 checkpoint (restored learners, the restored policy handed to the new engines,
the pending batches put again) and must still end with exactly the split run's samples and
weights. (Killed mid-generation instead, right after a sync, a rank dies while the controller
writes that step's checkpoint, so the restart is from the one before: same outcome, found here.)
"""

import json
import os
from pathlib import Path

import pytest
import torch

from rl_service.config import load_config
from rl_service.testing import faults

ROOT = Path(__file__).resolve().parents[2]
STEPS = 2


def _run(name: str, root: Path, model_dir: Path, *overrides: str, fault: str = "") -> dict:
    from safetensors.torch import load_file

    from rl_service.controller.loop import train
    from rl_service.controller.run_dir import prepare_run_dir
    from rl_service.tasks import bind_task, make_task

    cfg = load_config(
        ROOT / "configs" / "ci" / "tiny.yaml",
        [
            f"run_root={root}",
            f"name={name}",
            f"model.path={model_dir}",
            f"reward.fn={Path(__file__).parent / 'partial_credit.py'}:leading_digits",
            f"train.steps={STEPS}",
            "train.max_policy_lag=0",
            "task.num_eval=16",
            *overrides,
        ],
    )
    task = make_task(cfg.task)
    bind_task(task, str(model_dir), cfg.rollout.max_new_tokens)
    run_dir = prepare_run_dir(cfg)
    saved = {k: os.environ.pop(k, None) for k in (faults.FAULT_ENV, faults.MARKER_ENV)}
    try:
        if fault:
            os.environ[faults.FAULT_ENV] = fault
        summary = train(cfg, run_dir, str(model_dir), task=task)
    finally:  # the plan and its marker dir (set by train) must not reach later tests
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    return {
        "summary": summary,
        "rows": [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()],
        "consumed": (run_dir / "consumed.jsonl").read_text(),
        "weights": load_file(run_dir / "final" / "model.safetensors"),
    }


@pytest.fixture(scope="module")
def runs(session_ray, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("colocated")
    return {
        "colocated": _run(
            "colocated",
            root,
            tiny_model_dir,
            "placement=colocated",
            "rollout.num_workers=2",  # one engine per learner rank
            "train.checkpoint_every=1",
            fault="kill_learner:2",
        ),
        "split": _run("split", root, tiny_model_dir, "rollout.num_workers=1"),
    }


@pytest.mark.slow
def test_colocated_run_survives_a_dead_rank_balances_the_ledger_and_verifies_every_sync(runs):
    run = runs["colocated"]
    summary, rows = run["summary"], run["rows"]
    n, pps = 4, 16  # samples_per_prompt, prompts_per_step of configs/ci/tiny.yaml
    assert summary["samples/lost"] == 0 and summary["samples/in_flight"] == 0
    assert summary["samples/issued"] == summary["samples/trained"] == STEPS * pps * n
    assert [r["policy_version"] for r in rows] == list(range(1, STEPS + 1))
    # load_verified raised on a checksum mismatch or a probe diff above the tolerance (1e-4), so a
    # row exists only for a verified sync; the diff is the engine's against the learner's probes.
    for r in rows:
        assert 0.0 <= r["weight_sync/probe_max_diff"] < 1e-4
        assert r["policy/lag_mean"] == 0
    # the dead rank was a learner failure (never replaced as a rollout worker): one restart, from step 1
    assert summary["faults/restarts_learner"] == 1 and summary["faults/restarts_rollout"] == 0
    assert summary["faults/restarted_from_steps"] == [1]


@pytest.mark.slow
def test_colocated_trains_what_the_split_mode_trains(runs, tiny_model_dir):
    from safetensors.torch import load_file

    colocated, split = runs["colocated"], runs["split"]
    assert colocated["consumed"] == split["consumed"]  # same prompts, same steps, same order
    for a, b in zip(colocated["rows"], split["rows"]):  # same samples: same rewards and lengths
        for key in ("reward/mean", "reward/std", "response_length/mean", "samples/trained"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    moved = max((colocated["weights"][k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-4, "the run did not train: the comparison below would be vacuous"
    assert colocated["weights"].keys() == split["weights"].keys()
    for k, w in colocated["weights"].items():
        assert torch.allclose(w, split["weights"][k], rtol=0, atol=1e-5), k
    assert colocated["summary"]["eval/accuracy_end"] == split["summary"]["eval/accuracy_end"]
