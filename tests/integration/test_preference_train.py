"""train-rm and train-dpo on the tiny test model: real FSDP2 (gloo), a few hundred synthetic pairs.

The reward model must learn (loss falls, held-out pairwise accuracy beats chance) and its
directory must load as a plain transformers sequence classifier that scores like the
trained model. DPO must move the policy toward the chosen answers relative to the frozen
reference (implicit-reward accuracy rises from 0) and save a loadable causal LM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rl_service.config import AdditionConfig, DPOTrainConfig, PreferenceRunConfig, RMTrainConfig
from rl_service.preference.data import load_pairs
from rl_service.preference.train import train_preferences
from tests.integration.conftest import tiny_model_config


def _cfg(kind: str = "rm", **pref) -> PreferenceRunConfig:
    variant = {"rm": RMTrainConfig, "dpo": DPOTrainConfig}[kind]
    pref = {"num_train_pairs": 800, "batch_size": 32, "warmup_steps": 2, **pref}
    return PreferenceRunConfig(task=AdditionConfig(num_eval=200), model=tiny_model_config(), preference=variant(**pref))


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _pair_accuracy(model_dir: Path, pairs: list[dict]) -> float:
    """Share of pairs the saved reward model ranks chosen above rejected (plain HF loading)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.num_labels == 1
    texts = [p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs]
    with torch.no_grad():
        r = model(**tok(texts, padding=True, padding_side="right", return_tensors="pt")).logits[:, 0]
    return float((r[: len(pairs)] > r[len(pairs) :]).float().mean())


def test_train_rm_two_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two FSDP2 processes fit a reward model to its preference pairs, and save it as a plain HF
    reward model that scores exactly as evaluated in training.

    What is asserted is the fit (robust on every CPU: 3 seeds here gave training-pair accuracy
    0.995-1.000 and the loss 0.69 -> 0.24-0.26), not held-out generalisation: this 0.1M-param
    test model, 50 SFT steps from random, reaches only 0.52-0.62 held-out pairwise accuracy
    (chance 0.5) depending on seed and CPU numerics, so no bar there holds everywhere. The
    recipe that generalises (0.985 held-out) is configs/rm.yaml, measured in docs/algorithms.md."""
    cfg = _cfg(num_train_pairs=200, steps=300, lr=1e-3, eval_every=150, num_workers=2, label_smoothing=0.05)
    train, held_out = load_pairs(cfg)
    assert len(train) == 200 and len(held_out) == 200
    s = train_preferences("rm", cfg, str(tiny_model_dir), train, held_out, tmp_path)
    losses = _losses(tmp_path)
    train_acc = _pair_accuracy(tmp_path / "model", train)
    print(
        f"\n[rm] loss {sum(losses[:10]) / 10:.3f} -> {sum(losses[-10:]) / 10:.3f}; training-pair accuracy "
        f"{train_acc:.3f}; held-out accuracy {s['eval/accuracy_start']:.3f} -> {s['eval/accuracy_end']:.3f}; "
        f"{s['train_s']:.1f} s"
    )
    assert s["num_workers"] == 2 and s["steps"] == 300
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10  # measured 0.24-0.26 vs a bar of ~0.35
    assert train_acc > 0.9  # measured 0.995-1.000 (chance 0.5)
    # The saved directory is a plain HF reward model: same held-out accuracy as the trained one.
    assert abs(_pair_accuracy(tmp_path / "model", held_out) - s["eval/accuracy_end"]) < 1e-6


def test_train_rm_with_lm_loss_saves_plain_reward_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`rm_lm_coef > 0`: the chosen answers' next-token loss falls during train-rm, and the saved
    directory is the reward model alone (no LM head), scoring exactly as evaluated in training.
    Evaluated on its 200 training pairs (the fit; see test_train_rm_two_processes for why)."""
    from safetensors.torch import load_file

    cfg = _cfg(num_train_pairs=200, steps=60, lr=1e-3, eval_every=60, num_workers=2, rm_lm_coef=1.0)
    train, _ = load_pairs(cfg)
    s = train_preferences("rm", cfg, str(tiny_model_dir), train, train, tmp_path)
    print(
        f"\n[rm+lm] chosen NLL {s['eval/lm_loss_start']:.3f} -> {s['eval/lm_loss_end']:.3f}; training-pair "
        f"loss {s['eval/loss_start']:.3f} -> {s['eval/loss_end']:.3f}, accuracy {s['eval/accuracy_end']:.3f}; "
        f"{s['train_s']:.1f} s"
    )
    # 3 seeds here: NLL 2.92-2.96 -> 1.99-2.01, pair loss 0.694-0.696 -> 0.589-0.618
    assert s["eval/lm_loss_end"] < s["eval/lm_loss_start"] - 0.3  # the LM head really trains the backbone
    assert s["eval/loss_end"] < s["eval/loss_start"] - 0.03
    assert not any(k.startswith(("lm_head", "rm.")) for k in load_file(tmp_path / "model" / "model.safetensors"))
    assert abs(_pair_accuracy(tmp_path / "model", train) - s["eval/accuracy_end"]) < 1e-6  # same pooled token as HF


def test_train_dpo_moves_policy_toward_chosen(tiny_model_dir: Path, tmp_path: Path) -> None:
    """DPO moves the policy toward the chosen answers of its 200 training pairs (the fit; held-out
    pairs of this tiny model move by seed and CPU numerics: 0.51-0.62 implicit-reward accuracy)."""
    from transformers import AutoModelForCausalLM

    cfg = _cfg("dpo", num_train_pairs=200, steps=100, lr=2e-4, beta=0.2, eval_every=50)
    train, _ = load_pairs(cfg)
    s = train_preferences("dpo", cfg, str(tiny_model_dir), train, train, tmp_path)
    losses = _losses(tmp_path)
    print(
        f"\n[dpo] loss {sum(losses[:5]) / 5:.3f} -> {sum(losses[-5:]) / 5:.3f}; implicit-reward accuracy "
        f"{s['eval/accuracy_start']:.3f} -> {s['eval/accuracy_end']:.3f}; logp accuracy "
        f"{s['eval/logp_accuracy_start']:.3f} -> {s['eval/logp_accuracy_end']:.3f}; {s['train_s']:.1f} s"
    )
    # Step 0: policy == reference, so every implicit reward is exactly 0 and the loss is log 2.
    assert s["eval/accuracy_start"] == 0.0 and abs(s["eval/loss_start"] - 0.6931) < 1e-3
    # 3 seeds here: accuracy 0.730-0.745, loss -> 0.533-0.543, logp accuracy +0.19..+0.28, train loss -0.14
    assert s["eval/accuracy_end"] > 0.6 and s["eval/loss_end"] < s["eval/loss_start"] - 0.05
    assert s["eval/logp_accuracy_end"] > s["eval/logp_accuracy_start"] + 0.1
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert set(model.state_dict()) == set(initial.state_dict())
    assert any(not torch.equal(model.state_dict()[k], initial.state_dict()[k]) for k in initial.state_dict())


def test_pairs_from_jsonl_and_feedback_db(tmp_path: Path) -> None:
    from rl_service.config import ConfigError
    from rl_service.preference.data import write_jsonl
    from rl_service.serving.feedback import FeedbackStore, export_preferences

    store = FeedbackStore(str(tmp_path / "fb.sqlite"))
    for i in range(60):
        store.add_preference(f"f{i}", f"{i}+1=", str(i + 1), str(i + 2), None)
    store.close()
    cfg = _cfg()
    cfg.preference.eval_fraction = 0.2
    train, held_out = load_pairs(cfg, feedback_db=str(tmp_path / "fb.sqlite"))
    assert len(train) + len(held_out) == 60 and 0 < len(held_out) < 30
    assert all(p["chosen"] == str(int(p["prompt"].split("+")[0]) + 1) for p in train + held_out)
    # The same pairs through `rl-service feedback export` JSONL give the same split.
    store = FeedbackStore(str(tmp_path / "fb.sqlite"))
    export_preferences(store, tmp_path / "prefs.jsonl")
    store.close()
    assert load_pairs(cfg, data=str(tmp_path / "prefs.jsonl")) == (train, held_out)
    write_jsonl(held_out[:3], tmp_path / "held.jsonl")
    assert (
        load_pairs(cfg, data=str(tmp_path / "prefs.jsonl"), eval_data=str(tmp_path / "held.jsonl"))[1] == held_out[:3]
    )
    with pytest.raises(ConfigError):
        load_pairs(cfg, data=str(tmp_path / "prefs.jsonl"), feedback_db=str(tmp_path / "fb.sqlite"))


def test_train_rm_with_annotator_noise_handling_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`rl-service train-rm --data ROWS preference.noise=annotators`: rows with annotator ids
    (two right every time, one always reversed; each pair labelled by all three) become one
    oriented pair each, the reversing annotator found by EM (printed), and the reward model
    trained on those pairs ranks the clean training pairs right."""
    import subprocess
    import sys

    from rl_service.preference.data import annotated, synthetic_preferences, write_jsonl

    clean, held_out = synthetic_preferences(AdditionConfig(num_eval=200), 200, 0)
    rows = annotated(clean, {"ann": 1.0, "bob": 1.0, "rev": 0.0}, per_item=3, seed=0)
    write_jsonl(rows, tmp_path / "rows.jsonl")
    write_jsonl(held_out, tmp_path / "eval.jsonl")
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(
        "name: noisy-rm\nseed: 0\ntask: {name: addition, digits: 2, num_eval: 200}\n"
        f"model: {{cache_dir: {tiny_model_dir.parent}, build: {{hidden_size: 64, num_layers: 2, num_heads: 2, "
        "intermediate_size: 128}, sft: {max_steps: 50}}\n"
        f"run_root: {tmp_path / 'runs'}\n"
        "preference: {type: rm, noise: annotators, steps: 200, batch_size: 32, lr: 1.0e-3, eval_every: 200, "
        "warmup_steps: 2}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "rl_service.cli", "train-rm", str(cfg), "--data", str(tmp_path / "rows.jsonl"),
         "--eval-data", str(tmp_path / "eval.jsonl")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if "noise=annotators" in ln)
    assert "600 labels -> 200 pairs" in line and "0 contested" in line, line
    accuracies = dict(part.rsplit(" ", 1) for part in line.split("annotator accuracy: ")[1].split(", "))
    assert float(accuracies["rev"]) < 0.05 and float(accuracies["ann"]) > 0.95, accuracies
    # oriented by the reliable two (the reversing one trusted instead would put this near 0.2);
    # measured 0.81 after these 200 steps of the 0.1M-param test model
    assert _pair_accuracy(tmp_path / "runs" / "noisy-rm" / "model", clean) > 0.7


def test_train_rm_warm_starts_from_an_earlier_reward_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`model.path=<a reward model's directory>`: train-rm continues from it (head included),
    as the online loop's refits will: the second run starts where the first ended."""
    first = _cfg(num_train_pairs=200, steps=40, lr=1e-3, eval_every=40)
    train, held_out = load_pairs(first)
    s1 = train_preferences("rm", first, str(tiny_model_dir), train, held_out, tmp_path / "a")
    second = _cfg(num_train_pairs=200, steps=1, lr=1e-9, eval_every=1)
    s2 = train_preferences("rm", second, str(tmp_path / "a" / "model"), train, held_out, tmp_path / "b")
    assert s2["eval/accuracy_start"] == pytest.approx(s1["eval/accuracy_end"], abs=1e-6)
    assert _pair_accuracy(tmp_path / "b" / "model", held_out) == pytest.approx(s1["eval/accuracy_end"], abs=0.006)
