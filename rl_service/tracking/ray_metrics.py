"""Per-step metrics as `ray.util.metrics` gauges and counters, so they show on the cluster's
Prometheus endpoint (each node's `--metrics-export-port`) and the Ray dashboard's Grafana.

    exporter = RayMetricsExporter(run="ci-tiny")
    exporter.update(metrics)          # once per step, the same dict that goes to metrics.jsonl

Prometheus names are the project's metric names with `/` -> `_`, prefixed `rl_service_`
(Ray adds `ray_`): `reward/mean` -> `ray_rl_service_reward_mean{run="ci-tiny"}`. The `samples/*` values are
the run's cumulative totals, exported as gauges: a Ray counter cannot be incremented by 0,
so a counter of dropped samples would be absent (not 0) on a healthy run. Gauges live as
long as the process that set them; `ray_rl_service_steps_total` is a counter.
"""

from __future__ import annotations

from typing import Any

# project metric -> help text. Gauges: the latest value.
GAUGES = {
    "reward/mean": "mean reward of the step's samples",
    "reward/std": "std of the step's rewards",
    "kl/mean": "mean KL(policy || reference) per token",
    "entropy/mean": "mean policy entropy per token",
    "response_length/mean": "mean response length in tokens",
    "perf/tokens_per_s": "generated tokens per second of wall time",
    "perf/samples_per_s": "trained samples per second of wall time",
    "queue/prompts_depth": "prompt batches waiting for a rollout worker",
    "queue/rollouts_depth": "rollout batches waiting for a scorer",
    "queue/scored_depth": "scored batches waiting for the learner",
    "policy/lag_mean": "mean versions between the generating and the trained policy",
    "policy_version": "latest published policy version",
    "eval/accuracy": "held-out greedy exact match",
    "eval/rouge_l": "held-out ROUGE-L F1 of greedy completions (eval.metrics)",
    "eval/bleu": "held-out corpus BLEU of greedy completions (eval.metrics)",
    "eval/perplexity": "held-out perplexity of the policy (eval.metrics)",
    "timing_s/step": "seconds per learner step",
    # rl-service online (one row per round)
    "online/version_served": "policy version the online endpoint serves",
    "online/rollbacks": "versions rolled back so far",
    "online/feedback_pairs_total": "preference pairs in the feedback store",
    "online/feedback_per_min": "new preference pairs per minute since the last row",
    "online/rm_accuracy": "held-out pairwise accuracy of the adopted reward model",
    "online/reward_mean": "last-step mean reward of the latest PPO round",
    "online/kl_max": "largest per-token KL of the latest PPO round to the version it started from",
    "online/canary_live": "adopted reward model's mean score of the endpoint's canary answers",
    "online/canary_agreement": "share of the endpoint's canary answers equal to the checked candidate's",
    "online/canary_checked": "adopted reward model's mean score of the candidate's canary answers",
    "online/rm_refit_accuracy": "held-out pairwise accuracy of the latest refit (adopted or not)",
    "online/rm_adopted": "1 when the latest refit was adopted",
    "online/rolled_back": "1 on a row of a rollback",
    "online/refused": "1 when the round's version failed a guard",
    # cumulative totals of the run
    "samples/trained": "samples used in an update",
    "samples/dropped_stale": "samples dropped for exceeding train.max_policy_lag",
    "samples/dropped_invalid": "samples dropped for an invalid reward (or an incomplete group)",
}


def prometheus_name(key: str) -> str:
    """`reward/mean` -> `rl_service_reward_mean` (Ray prefixes `ray_` on export)."""
    return "rl_service_" + key.replace("/", "_").replace(".", "_").replace("-", "_")


class RayMetricsExporter:
    """Holds one gauge/counter per project metric; needs a connected Ray (driver or actor)."""

    def __init__(self, run: str):
        from ray.util.metrics import Counter, Gauge

        self.tags = {"run": run}
        self.gauges = {k: Gauge(prometheus_name(k), description=d, tag_keys=("run",)) for k, d in GAUGES.items()}
        self.steps = Counter(prometheus_name("steps"), description="learner steps completed", tag_keys=("run",))

    def update(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Set gauges from `metrics` (missing or non-numeric keys are skipped) and count the step.
        Returns {prometheus name: value} as exported."""
        out = {}
        for key, gauge in self.gauges.items():
            v = metrics.get(key)
            if isinstance(v, (int, float)) and v == v:  # skip None / NaN
                gauge.set(float(v), tags=self.tags)
                out[prometheus_name(key)] = float(v)
        self.steps.inc(1.0, tags=self.tags)
        return out
