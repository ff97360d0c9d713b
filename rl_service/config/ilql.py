"""`rl-service train-ilql`: offline value-based RL (ILQL) from logged (prompt, completion, reward)
rows. The policy stays frozen (it is the behaviour policy's logits the decoding shifts); Q and V
heads are trained on its hidden states; decoding adds beta * (Q - V) to its logits."""

from __future__ import annotations

from pydantic import Field

from rl_service.config.base import Section
from rl_service.config.reward import RewardConfig
from rl_service.config.run import RunHeader


class ILQLConfig(Section):
    gamma: float = Field(1.0, gt=0, le=1)
    """Discount per token (1 = the episode's reward counts fully at every token)."""
    tau: float = Field(0.7, gt=0, lt=1)
    """Expectile of V against the target Q: > 0.5 makes V an in-sample soft max over the logged actions."""
    cql_alpha: float = Field(0.1, ge=0)
    """Weight of the conservative term logsumexp_a Q(s, a) - Q(s, a_taken)."""
    polyak: float = Field(0.01, gt=0, le=1)
    """Target Q head <- (1 - polyak) * target + polyak * online Q head, after every step."""
    beta: float = Field(1.0, ge=0)
    """Decoding: logits + beta * (Q - V); written into the exported model (0 = the behaviour policy)."""
    eval_betas: list[float] = [0.0, 0.5, 1.0, 2.0, 4.0]
    """Betas evaluated on the held-out prompts at the end (0 = the behaviour policy, the baseline)."""
    head_hidden: int = Field(256, ge=1)
    """Width of the Q and V heads (each a 2-layer MLP on the policy's last hidden state)."""
    steps: int = Field(2000, ge=1)
    """Optimizer steps on the heads."""
    batch_size: int = Field(256, ge=1)
    """Logged completions per step."""
    lr: float = Field(1e-3, gt=0)
    """Adam learning rate of the heads."""
    eval_every: int = Field(500, ge=1)
    """Steps between held-out evaluations at `beta` (sampled, `eval_samples` per prompt)."""
    behaviour_prompts: int = Field(2000, ge=1)
    """Without --data / --feedback-db: training prompts of the task the behaviour policy (the model,
    sampling at `behaviour_temperature`) answers to make the logged data."""
    behaviour_samples: int = Field(4, ge=1)
    """Completions per prompt in that data."""
    behaviour_temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the behaviour policy (for the data and for every evaluation)."""
    max_new_tokens: int = Field(5, ge=1)
    """Completion length cap (data and evaluation)."""
    eval_samples: int = Field(4, ge=1)
    """Sampled completions per held-out prompt in an evaluation (plus one greedy)."""
    threads: int = Field(1, ge=1)
    """torch intra-op threads."""


class ILQLRunConfig(RunHeader):
    """Top-level config of `rl-service train-ilql` (configs/ilql.yaml)."""

    name: str = "ilql"
    """Run name: the model, data and metrics go to `<run_root>/<name>/`."""
    reward: RewardConfig = RewardConfig()
    """Scores the behaviour policy's completions (when it makes the data) and every evaluation."""
    ilql: ILQLConfig = ILQLConfig()
    """The ILQL loop and its decoding."""
