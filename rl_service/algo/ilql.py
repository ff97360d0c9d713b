"""ILQL's losses and decoding rule (Snell et al. 2022, "Offline RL for Natural Language Generation
with Implicit Language Q Learning"), per token, as pure torch.

A completion is a token-level episode: at response position t the state s_t is everything before
token t and the action a_t is token t; the reward r_t is usually 0 but at the last token. Heads on
the policy's hidden states give Q(s_t, .) over the vocabulary and V(s_t); a Polyak-averaged copy of
the Q head (the target) gives Q^(s_t, a_t). Shapes: B rows, T response positions, V vocabulary;
masks right-padded 0/1 [B, T].

    Q loss   (Q(s_t, a_t) - (r_t + gamma * V(s_t+1)))^2, V(s_t+1) = 0 after a row's last token,
             and detached (the value is the target of Q, not trained by it)
    V loss   expectile_tau(Q^(s_t, a_t) - V(s_t)): tau > 1/2 makes V an upper expectile of the
             Q-values of the actions in the data: an in-sample max, no out-of-data actions queried
    CQL      logsumexp_a Q(s_t, a) - Q(s_t, a_t): pushes down Q on actions the data never took
    decoding logits'(s_t, .) = logits(s_t, .) + beta * (Q(s_t, .) - V(s_t))
"""

from __future__ import annotations

import torch
from torch import Tensor

from rl_service.algo.masking import masked_mean


def expectile_loss(diff: Tensor, tau: float) -> Tensor:
    """|tau - 1(diff < 0)| * diff^2, elementwise (diff = target - prediction). tau 0.5 = half
    the squared error; tau -> 1 weighs under-estimates (diff > 0) more."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"expectile tau must be in (0, 1), got {tau}")
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff.square()


def next_values(values: Tensor, mask: Tensor) -> Tensor:
    """V(s_t+1) for every response position: values [B, T] shifted left one, 0 where the next
    position is not a response token (after the last one: the episode ended). -> [B, T]."""
    nxt = torch.zeros_like(values)
    nxt[:, :-1] = values[:, 1:] * mask[:, 1:]
    return nxt


def ilql_losses(
    q_all: Tensor,
    target_q_taken: Tensor,
    values: Tensor,
    actions: Tensor,
    rewards: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    tau: float = 0.7,
    cql_alpha: float = 0.1,
) -> tuple[Tensor, dict[str, float]]:
    """The ILQL objective on a batch of logged completions.

    q_all [B, T, V]: the Q head at each response position; target_q_taken [B, T]: the target Q
    head's value of the action taken (no gradient); values [B, T]: the V head; actions [B, T]
    int: the tokens taken; rewards [B, T]; mask [B, T].
    -> (q_loss + v_loss + cql_alpha * cql, metrics: loss/q, loss/v, loss/cql, q/mean, v/mean)."""
    mask = mask.to(q_all.dtype)
    q_taken = q_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)  # [B, T]
    target = rewards.to(q_all.dtype) + gamma * next_values(values.detach(), mask)
    q_loss = masked_mean((q_taken - target).square(), mask)
    v_loss = masked_mean(expectile_loss(target_q_taken.detach() - values, tau), mask)
    cql = masked_mean(torch.logsumexp(q_all, dim=-1) - q_taken, mask)
    loss = q_loss + v_loss + cql_alpha * cql
    metrics = {
        "loss/q": float(q_loss.detach()),
        "loss/v": float(v_loss.detach()),
        "loss/cql": float(cql.detach()),
        "q/mean": float(masked_mean(q_taken.detach(), mask)),
        "v/mean": float(masked_mean(values.detach(), mask)),
    }
    return loss, metrics


@torch.no_grad()
def polyak_update(target: list[Tensor], online: list[Tensor], rate: float) -> None:
    """target <- (1 - rate) * target + rate * online, in place (rate 1 = a copy)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"polyak rate must be in [0, 1], got {rate}")
    for t, o in zip(target, online):
        t.mul_(1.0 - rate).add_(o.detach(), alpha=rate)


def shifted_logits(logits: Tensor, q: Tensor, v: Tensor, beta: float) -> Tensor:
    """ILQL's decoding rule: logits [..., V] + beta * (Q [..., V] - V [...]); beta 0 = the
    behaviour policy's own logits."""
    return logits + beta * (q - v.unsqueeze(-1))
