"""Multi-turn environment rollouts with real vLLM, and the training loop on an environment.

1. A RolloutWorker with a vLLM engine plays guess-number episodes on a tiny model. Every
   engine call is recorded: turn k's input must be turn k-1's input + its generated ids,
   unchanged + the observation's ids; the Sample must be exactly that sequence with the
   right mask; and vLLM scoring the finished sequence must reproduce the rollout logprobs
   (it generated each turn from exactly these tokens). vLLM runs in its own process (one
   in-process engine per process).
2. `rl-service train` on the environment for 2 steps (Ray, a vLLM worker, 2 FSDP2 learners).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, tiny_model_config

TOL = 1e-4


def guess_task_config():
    from rl_service.config import GuessNumberConfig

    return GuessNumberConfig(num_eval=40)


@pytest.fixture(scope="module")
def guess_model_dir() -> Path:
    """Tiny model warm-started on naive guess-number play (built once, cached)."""
    from rl_service.models.build import ensure_model

    return ensure_model(tiny_model_config(), guess_task_config(), seed=0, progress=False)


def _rollout_main(model_dir: str, out: str) -> None:
    """Subprocess body: one vLLM worker, recorded engine calls, a JSON dump for the test."""
    from rl_service.config import RolloutConfig
    from rl_service.rollout.worker import RolloutWorker
    from rl_service.tasks import make_task
    from rl_service.types import PromptBatch

    cfg = RolloutConfig(
        engine="vllm",
        samples_per_prompt=3,
        max_new_tokens=3,
        kv_cache_gib=0.0625,
        temperature=1.0,
        resources={"num_cpus": 1},
    )
    worker = RolloutWorker(cfg, model_dir, seed=3)
    calls = []
    real = worker.engine.generate_ids

    def recording(prompt_ids, n, max_new_tokens, **kw):
        outs = real(prompt_ids, n, max_new_tokens, **kw)
        calls.append(
            {
                "inputs": [list(p) for p in prompt_ids],
                "outputs": [
                    [{"ids": list(c.token_ids), "text": c.text, "prompt_ids": list(c.prompt_ids)} for c in g]
                    for g in outs
                ],
            }
        )
        return outs

    worker.engine.generate_ids = recording
    task = make_task(guess_task_config())
    prompts = task.eval_prompts[:6]
    batch = worker.generate(PromptBatch(0, tuple(prompts)))
    worker.engine.generate_ids = real  # the greedy eval below is not part of the recorded rollout
    tok = worker.engine.tokenizer
    seqs = [list(s.prompt_ids + s.response_ids) for s in batch.samples]
    dump = {
        "calls": calls,
        "samples": [
            {
                "prompt_id": s.prompt_id,
                "prompt_ids": list(s.prompt_ids),
                "response_ids": list(s.response_ids),
                "mask": list(s.response_mask),
                "logprobs": list(s.response_logprobs),
                "metadata": s.metadata,
                "finish_reason": s.finish_reason,
            }
            for s in batch.samples
        ],
        "obs_ids": {o: tok(o, add_special_tokens=False)["input_ids"] for o in (" higher: ", " lower: ", " invalid: ")},
        "prompt_ids": tok(prompts[0].text)["input_ids"],
        "eos": tok.eos_token_id,
        "scores": worker.engine.score(seqs),
        "eval": worker.evaluate_episodes([p.metadata for p in task.eval_prompts[:10]], max_new_tokens=3),
    }
    Path(out).write_text(json.dumps(dump))


@pytest.fixture(scope="module")
def rollout(guess_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("multiturn") / "rollout.json"
    code = (
        "from tests.integration.test_multiturn import _rollout_main; "
        f"_rollout_main({str(guess_model_dir)!r}, {str(out)!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_turn_inputs_are_exact_concatenations(rollout):
    calls, obs_ids = rollout["calls"], rollout["obs_ids"]
    first = calls[0]
    assert len(first["inputs"]) == 6 and all(len(g) == 3 for g in first["outputs"])
    assert all(inp == rollout["prompt_ids"] for inp in first["inputs"])
    # Every (input + generated ids) of a turn, by episode: follow each episode through the calls.
    produced = [inp + c["ids"] for inp, g in zip(first["inputs"], first["outputs"]) for c in g]
    checked = 0
    for call in calls[1:]:
        for inp, (c,) in zip(call["inputs"], call["outputs"]):
            assert c["prompt_ids"] == inp  # vLLM saw these ids, not a re-tokenisation
            prev = [p for p in produced if inp[: len(p)] == p and len(inp) > len(p)]
            assert prev, "turn input does not extend any earlier turn's ids"
            appended = inp[len(max(prev, key=len)) :]  # the episode's latest turn
            assert appended in obs_ids.values(), f"appended {appended} is not an observation's ids"
            produced.append(inp + c["ids"])
            checked += 1
    assert checked > 0, "no episode lasted two turns"
    # Each sample is exactly the last produced sequence of its episode.
    for s in rollout["samples"]:
        full = s["prompt_ids"] + s["response_ids"]
        assert full in produced and s["prompt_ids"] == rollout["prompt_ids"]


def test_sample_mask_and_logprobs_mark_policy_tokens(rollout):
    obs_lens = {len(v) for v in rollout["obs_ids"].values()}
    for s, scored in zip(rollout["samples"], rollout["scores"]):
        R, P = len(s["response_ids"]), len(s["prompt_ids"])
        assert len(s["mask"]) == len(s["logprobs"]) == R and s["mask"][0] == 1 and s["mask"][-1] == 1
        # Runs of 0s are whole observations; env tokens carry logprob 0.
        runs, run = [], 0
        for m in s["mask"] + [1]:
            if m == 0:
                run += 1
            elif run:
                runs.append(run)
                run = 0
        assert set(runs) <= obs_lens and len(runs) == s["metadata"]["env_turns"] - 1
        assert all(lp == 0.0 for lp, m in zip(s["logprobs"], s["mask"]) if m == 0)
        # vLLM scoring the whole episode reproduces the rollout logprobs on the policy tokens.
        for i, (lp, m) in enumerate(zip(s["logprobs"], s["mask"])):
            if m:
                assert abs(scored[P - 1 + i] - lp) < TOL
        meta = s["metadata"]
        assert meta["env_return"] == (1.0 if meta["env_success"] else 0.0)
        assert s["finish_reason"] in ("stop", "length")
    assert {s["prompt_id"] for s in rollout["samples"]} == {-1 - i for i in range(6)}
    assert len(rollout["eval"]) == 10 and all(set(e) >= {"env_success", "env_return"} for e in rollout["eval"])


@pytest.mark.slow
def test_train_two_steps_on_the_environment(tmp_path, guess_model_dir):
    steps = 2
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rl_service.cli",
            "train",
            str(REPO / "configs/guess_number.yaml"),
            f"run_root={tmp_path}",
            f"train.steps={steps}",
            f"model.path={guess_model_dir}",
            "task.num_eval=40",
            "train.prompts_per_step=16",
            "rollout.prompts_per_batch=8",
            "rollout.samples_per_prompt=4",
            "train.eval_every=0",
            "train.queue_size=4",
            "rollout.num_workers=1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "guess_number"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert r["weight_sync/probe_max_diff"] < TOL  # probes are multi-turn transcripts
        assert r["rollout/logprob_diff_max"] < TOL  # learner recompute on policy tokens only
        assert 0.0 <= r["reward/mean"] <= 1.0 and r["samples/trained"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples/lost"] == 0 and summary["samples/issued"] == steps * 16 * 4
    assert summary["samples/dropped_invalid"] == 0  # every episode carried its return
    assert 0.0 <= summary["eval/accuracy_start"] <= 1.0 and 0.0 <= summary["eval/accuracy_end"] <= 1.0
