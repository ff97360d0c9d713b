"""rl_service.algo.preference: Bradley–Terry and DPO against plain-Python loops and by hand."""

import math

import pytest
import torch

from rl_service.algo.preference import bradley_terry_loss, dpo_loss, sequence_logprobs, smoothed_pair_nll


def loop_pair_nll(z: float, eps: float) -> float:
    """-(1-eps) log sigmoid(z) - eps log sigmoid(-z), written out with math.exp."""
    sig = 1.0 / (1.0 + math.exp(-z))
    return -(1 - eps) * math.log(sig) - eps * math.log(1.0 - sig)


@pytest.mark.parametrize("eps,margin", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.5), (0.2, 1.0)])
def test_bradley_terry_matches_loop(eps, margin):
    gen = torch.Generator().manual_seed(0)
    rc, rr = torch.randn(7, generator=gen), torch.randn(7, generator=gen)
    loss, metrics = bradley_terry_loss(rc, rr, margin=margin, label_smoothing=eps)
    expected = [loop_pair_nll(float(c) - float(r) - margin, eps) for c, r in zip(rc, rr)]
    assert float(loss) == pytest.approx(sum(expected) / 7, rel=1e-5)
    assert metrics["loss"] == pytest.approx(sum(expected) / 7, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(sum(float(c) > float(r) for c, r in zip(rc, rr)) / 7)
    assert metrics["reward/margin"] == pytest.approx(float((rc - rr).mean()), abs=1e-6)


def test_bradley_terry_hand_computed():
    # r_c - r_r = [2, 0, -1]: losses log(1+e^-2), log 2, log(1+e^1)
    loss, metrics = bradley_terry_loss(torch.tensor([3.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]))
    expected = (math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.e)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(1 / 3)  # the tie does not count as correct
    # A per-pair margin of 2 on the first pair makes its logit 0: loss log 2.
    loss_m, _ = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0]), margin=torch.tensor([2.0]))
    assert float(loss_m) == pytest.approx(math.log(2), rel=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up():
    rc = torch.tensor([0.5, -0.2], requires_grad=True)
    rr = torch.tensor([0.1, 0.3], requires_grad=True)
    loss, _ = bradley_terry_loss(rc, rr, label_smoothing=0.1)
    loss.backward()
    # d/d r_c of -log sigmoid(d) = -(1 - sigmoid(d)) / B (plus the smoothing term): negative while d < logit(1-eps).
    d = (rc - rr).detach()
    expected = (-(0.9) * (1 - torch.sigmoid(d)) + 0.1 * torch.sigmoid(d)) / 2
    assert torch.allclose(rc.grad, expected, atol=1e-6)
    assert torch.allclose(rr.grad, -expected, atol=1e-6)


def test_label_smoothing_bounds_the_optimum():
    # With smoothing the loss is minimised at a finite logit z* = log((1-eps)/eps), not at +inf.
    eps = 0.1
    z = torch.linspace(0, 6, 601)
    best = z[smoothed_pair_nll(z, eps).argmin()]
    assert float(best) == pytest.approx(math.log(0.9 / 0.1), abs=0.01)
    with pytest.raises(ValueError):
        smoothed_pair_nll(z, 0.5)


def test_large_logits_stay_finite():
    loss, _ = bradley_terry_loss(torch.tensor([1e4, -1e4]), torch.tensor([-1e4, 1e4]), label_smoothing=0.05)
    assert torch.isfinite(loss)
    assert float(loss) == pytest.approx((0.05 * 2e4 + 0.95 * 2e4) / 2, rel=1e-4)


def test_denom_makes_shards_add_up():
    gen = torch.Generator().manual_seed(1)
    rc, rr = torch.randn(10, generator=gen), torch.randn(10, generator=gen)
    full, _ = bradley_terry_loss(rc, rr, margin=0.3)
    parts = [bradley_terry_loss(rc[s], rr[s], margin=0.3, denom=10)[0] for s in (slice(0, 4), slice(4, 10))]
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-6)


def test_sequence_logprobs_ignores_padding():
    lp = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, float("inf"), float("inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sequence_logprobs(lp, mask).tolist() == [-3.0, -0.5]


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2)])
def test_dpo_matches_loop(beta, eps):
    gen = torch.Generator().manual_seed(2)
    pc, pr, rc, rr = (torch.randn(6, generator=gen) * 3 for _ in range(4))
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    zs = [beta * ((float(a) - float(c)) - (float(b) - float(d))) for a, b, c, d in zip(pc, pr, rc, rr)]
    assert float(loss) == pytest.approx(sum(loop_pair_nll(z, eps) for z in zs) / 6, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(sum(z > 0 for z in zs) / 6)
    assert metrics["reward/margin"] == pytest.approx(sum(zs) / 6, abs=1e-5)


def test_dpo_hand_computed_and_reference_start():
    # Policy == reference: every implicit reward is 0, loss log 2, accuracy 0 (no preference yet).
    lp = torch.tensor([-3.0, -1.0])
    loss, metrics = dpo_loss(lp, lp - 1, lp, lp - 1, beta=0.1)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    assert metrics["accuracy"] == 0.0
    # chosen up by 2 nats, rejected down by 3 vs reference, beta 0.2 -> z = 0.2 * 5 = 1.
    loss, metrics = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-8.0]), torch.tensor([-3.0]), torch.tensor([-5.0]), beta=0.2
    )
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)
    assert metrics["reward/chosen"] == pytest.approx(0.4) and metrics["reward/rejected"] == pytest.approx(-0.6)
    assert metrics["accuracy"] == 1.0
    with pytest.raises(ValueError):
        dpo_loss(lp, lp, lp, lp, beta=0.0)


def test_dpo_gradient_only_through_policy():
    pc = torch.tensor([-2.0, -1.0], requires_grad=True)
    pr = torch.tensor([-1.5, -3.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, torch.tensor([-2.0, -1.0]), torch.tensor([-1.5, -3.0]), beta=0.5)
    loss.backward()
    # At z = 0: d loss / d pi_c = -beta * sigmoid(-0) / B = -0.5 * 0.5 / 2
    assert torch.allclose(pc.grad, torch.full((2,), -0.125))
    assert torch.allclose(pr.grad, torch.full((2,), 0.125))


# ---------------------------------------------------------------- the synthetic preference data


def test_synthetic_pairs_are_checkable_and_split():
    from rl_service.config import AdditionConfig
    from rl_service.preference.data import synthetic_preferences
    from rl_service.tasks.addition import AdditionTask

    cfg = AdditionConfig(num_eval=50)
    train, held_out = synthetic_preferences(cfg, 500, seed=3)
    assert len(train) == 500 and len(held_out) == 50
    task = AdditionTask(cfg)
    for pair in train + held_out:
        a, b = (int(x) for x in pair["prompt"].rstrip("=").split("+"))
        assert pair["chosen"] == str(a + b) and pair["rejected"] != pair["chosen"] and int(pair["rejected"]) >= 0
    assert {p["prompt"] for p in held_out} == {p.prompt for p in task.eval_problems}
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held_out}
    assert synthetic_preferences(cfg, 500, seed=3) == (train, held_out)  # deterministic
    assert synthetic_preferences(cfg, 500, seed=4)[0] != train


def test_wrong_answers_cover_the_mistake_kinds():
    import random

    from rl_service.preference.data import _no_carry_sum, wrong_answer

    assert _no_carry_sum(37, 48) == 75 and _no_carry_sum(99, 1) == 90
    seen = {int(wrong_answer(37, 48, random.Random(i))) for i in range(200)}
    assert seen == {84, 86, 95, 75, 58}  # +-1, +-10 (95 and 75; 75 is also the no-carry sum), reversed


def test_split_by_prompt_and_jsonl_roundtrip(tmp_path):
    from rl_service.preference.data import read_jsonl, split_by_prompt, write_jsonl

    pairs = [{"prompt": f"q{i % 40}", "chosen": "a", "rejected": "b"} for i in range(200)]
    train, held_out = split_by_prompt(pairs, 0.25, seed=0)
    assert len(train) + len(held_out) == 200 and 0 < len(held_out) < 100
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held_out}  # a prompt's pairs stay together
    write_jsonl(held_out, tmp_path / "x.jsonl")
    assert read_jsonl(tmp_path / "x.jsonl") == held_out
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_jsonl(tmp_path / "bad.jsonl")
