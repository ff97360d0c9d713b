"""The TRPO update (learner.optimizer=trpo): one natural-gradient step of the policy per batch.

    1. g = grad J(theta_old),  J = agg(ratio * A) [- kl_coef * agg(KL to the reference)]
                                                   one pass over the batch, micro-batch by micro-batch
    2. F v = d/dtheta (grad KL . v) with KL = mean over response tokens of the exact
       KL(pi_theta_old || pi_theta) (all of the vocabulary), on every k-th row (trpo.fvp_fraction):
       each micro-batch's first-order gradient is built once with its graph kept, then each
       product is one more backward through it (double backward)
    3. x = CG(F + damping I, g) (trpo.cg_iters products), full step = sqrt(2 max_kl / x.(F+dI)x) x
    4. line search (algo/trpo.py) on theta_old + frac * step: the surrogate must gain (> 0 and
       >= accept_ratio of g . frac step) and the KL to theta_old (k3 estimator on the batch's
       sampled tokens, as policy/approx_kl) stay <= max_kl; when no fraction passes, theta_old stays
    5. the critic: the same AdamW value-loss steps PPO takes (ppo_epochs x num_minibatches)

One process, the policy not sharded (LearnerConfig._trpo_runs_alone): FSDP2 runs the forward on
unsharded copies it gathers outside autograd, so a gradient with respect to its sharded
parameters (what a Fisher-vector product differentiates) is not in the graph.
"""

from __future__ import annotations

import math

import torch

from rl_service.algo import trpo
from rl_service.algo.kl import kl_penalty
from rl_service.algo.losses import value_loss
from rl_service.algo.masking import aggregate_loss, loss_denom, masked_sum, work_token_counts
from rl_service.config import LearnerConfig
from rl_service.learner.batching import epoch_order, minibatches
from rl_service.learner.forward import Models, critic_values, policy_logprobs
from rl_service.learner.fsdp import clip_grad_norm
from rl_service.learner.prepare import RolloutTensors

_MAX_LOG_RATIO = 20.0


def trpo_update(
    models: Models, critic_opt: torch.optim.Optimizer | None, data: RolloutTensors, cfg: LearnerConfig, kl_coef: float
) -> dict[str, float]:
    """One TRPO step on `data` (the whole batch), then the critic's steps; the metrics row."""
    t, policy, N = cfg.trpo, models.policy, data.mask.shape[0]
    params = [p for p in policy.parameters() if p.requires_grad]
    kl_in_loss = cfg.kl.placement == "loss" and kl_coef > 0
    rows = list(range(N))
    tokens = max(float(data.mask.sum()), 1.0)
    denom = loss_denom(data.mask, cfg.loss_agg)

    def objective(idx: list[int], logprobs: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share of J (the shares add up to J)."""
        mask = data.mask[idx]
        log_ratio = (logprobs - data.old_logprobs[idx]).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        j = aggregate_loss(torch.exp(log_ratio) * data.advantages[idx], mask, cfg.loss_agg, denom)
        if kl_in_loss:
            kl = kl_penalty(logprobs, data.ref_logprobs[idx], cfg.kl.estimator)
            j = j - kl_coef * aggregate_loss(kl, mask, cfg.loss_agg, denom)
        return j

    # 1. the gradient, J and the current token logprobs (the line search's KL is to these)
    grads = [torch.zeros_like(p) for p in params]
    current = torch.zeros_like(data.old_logprobs)
    base, entropy = 0.0, 0.0
    for idx in _chunks(rows, cfg.micro_batch_size):
        lp, ent = policy_logprobs(policy, data.input_ids[idx], data.attention_mask[idx], with_entropy=True)
        j = objective(idx, lp)
        for acc, g in zip(grads, torch.autograd.grad(j, params, allow_unused=True)):
            if g is not None:
                acc.add_(g)
        base += float(j.detach())
        entropy += float(masked_sum(ent, data.mask[idx]))
        current[idx] = lp.detach()
    g = trpo.flat(grads)
    out = {
        "loss/policy": -base,
        "entropy/mean": entropy / tokens,
        "grad_norm": float(g.norm()),
        "policy/early_stop": 0.0,
        "policy/kl_hard_limit_hit": 0.0,
    }
    search = trpo.LineSearch(False, 0.0, 0.0, 0.0, 0)
    finite = math.isfinite(out["grad_norm"]) and math.isfinite(base)
    if finite and out["grad_norm"] > 0:
        fvp = _fisher_vector_product(policy, params, data, rows[:: max(1, round(1 / t.fvp_fraction))], cfg)
        damped = lambda v: fvp(v) + t.damping * v
        x = trpo.conjugate_gradient(damped, g, t.cg_iters)
        full = trpo.step_scale(x, damped(x), t.max_kl) * x
        finite = bool(torch.isfinite(full).all())
        if finite and float(full.norm()) > 0:
            search = _line_search(policy, params, data, cfg, full, float(g @ full), base, current, tokens, objective)
            out["trpo/expected_gain"] = float(g @ full)
            out["trpo/full_step_norm"] = float(full.norm())
    out.update(
        {
            "trpo/accepted": float(search.accepted),
            "trpo/step_frac": search.frac,
            "trpo/line_search_tries": float(search.tries),
            "trpo/surrogate_gain": search.gain,
            "policy/approx_kl": search.kl if search.accepted else 0.0,
            "policy/approx_kl_max": search.kl if search.accepted else 0.0,
            "train/optimizer_steps": float(search.accepted),
            "train/skipped_steps": float(not finite),
            "train/trailing_skipped": float(not finite),
        }
    )
    if models.critic is not None:
        out["loss/value"], out["value/clipfrac"] = _critic_steps(models, critic_opt, data, cfg)
    return {
        **out,
        **work_token_counts(data.mask, data.advantages, data.attention_mask, every_token_has_grad=False),
    }


def _chunks(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _fisher_vector_product(policy, params, data: RolloutTensors, rows: list[int], cfg: LearnerConfig):
    """v -> F v on `rows`: F = Hessian at theta_old of the mean exact KL(pi_theta_old || pi_theta)
    per response token. The first-order gradients (with their graphs) are built here, once."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n_tokens = max(float(data.mask[rows].sum()), 1.0)
    first = []
    for idx in _chunks(rows, cfg.micro_batch_size):
        # SDPA's math kernel: the fused CPU (and flash) kernels have no second derivative
        with sdpa_kernel([SDPBackend.MATH]):
            logits = policy(input_ids=data.input_ids[idx], attention_mask=data.attention_mask[idx], use_cache=False)
            logits = logits.logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)  # [b, T-1, V]
        old = logp.detach()
        kl = ((old.exp() * (old - logp)).sum(-1) * data.mask[idx]).sum() / n_tokens  # 0, gradient 0, at theta_old
        grads = torch.autograd.grad(kl, params, create_graph=True, allow_unused=True)
        first.append([gr if gr is not None else torch.zeros_like(p) for gr, p in zip(grads, params)])

    def product(v: torch.Tensor) -> torch.Tensor:
        vs = trpo.unflat(v, params)
        total = [torch.zeros_like(p) for p in params]
        for grads in first:
            dot = sum((gr * vv).sum() for gr, vv in zip(grads, vs) if gr.requires_grad)
            if not isinstance(dot, torch.Tensor):
                continue
            for acc, h in zip(total, torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)):
                if h is not None:
                    acc.add_(h)
        return trpo.flat(total)

    return product


@torch.no_grad()
def _line_search(policy, params, data, cfg, full, expected, base, current, tokens, objective) -> trpo.LineSearch:
    """Try theta_old + frac * full (frac = 1, backtrack, ...); the accepted weights stay in
    place, theta_old is put back when none is accepted."""
    t = cfg.trpo
    theta_old = [p.detach().clone() for p in params]
    step = trpo.unflat(full, params)

    def evaluate(frac: float) -> tuple[float, float]:
        for p, p0, d in zip(params, theta_old, step):
            p.copy_(p0 + frac * d)
        j, kl = 0.0, 0.0
        for idx in _chunks(list(range(data.mask.shape[0])), cfg.micro_batch_size):
            lp, _ = policy_logprobs(policy, data.input_ids[idx], data.attention_mask[idx])
            j += float(objective(idx, lp))
            log_ratio = (lp - current[idx]).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
            kl += float(masked_sum(torch.expm1(log_ratio) - log_ratio, data.mask[idx]))  # k3 of KL(old || new)
        return j - base, kl / tokens

    result = trpo.line_search(evaluate, expected, t.max_kl, t.backtrack, t.max_backtracks, t.accept_ratio)
    if not result.accepted:
        for p, p0 in zip(params, theta_old):
            p.copy_(p0)
    return result


def _critic_steps(models: Models, critic_opt, data: RolloutTensors, cfg: LearnerConfig) -> tuple[float, float]:
    """ppo_epochs x num_minibatches AdamW steps on the value loss alone; -> (mean loss, clipfrac)."""
    gae = cfg.advantage
    losses, clipfracs = [], []
    for epoch in range(cfg.ppo_epochs):
        for mb in minibatches(epoch_order(data.mask.shape[0], 7919 + epoch), cfg.num_minibatches):
            denom = loss_denom(data.mask[mb], cfg.loss_agg)
            total, clip_tok = 0.0, 0.0
            for idx in _chunks(mb, cfg.micro_batch_size):
                values = critic_values(models.critic, data.input_ids[idx], data.attention_mask[idx])
                old, ret, mask = data.old_values[idx], data.returns[idx], data.mask[idx]
                vl, vm = value_loss(values, old, ret, mask, gae.value_clip_eps, cfg.loss_agg, denom)
                (gae.vf_coef * vl).backward()
                total += float(vl.detach())
                clip_tok += vm["value/clipfrac"] * float(data.mask[idx].sum())
            norm = clip_grad_norm(models.critic, cfg.max_grad_norm)
            if math.isfinite(norm) and math.isfinite(total):
                critic_opt.step()
            critic_opt.zero_grad(set_to_none=True)
            losses.append(total)
            clipfracs.append(clip_tok / max(float(data.mask[mb].sum()), 1.0))
    return sum(losses) / len(losses), sum(clipfracs) / len(clipfracs)
