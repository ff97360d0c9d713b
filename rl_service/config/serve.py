"""`serve:` the OpenAI-compatible Ray Serve endpoint (rl_service/serving/)."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator

from rl_service.config.base import Section, fold_legacy
from rl_service.config.engine import LEGACY_ENGINE_FIELDS, EngineConfig

SECRET_MASK = "***"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost` (a name that resolves elsewhere counts as not loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret(value: SecretStr | None) -> str | None:
    """The secret's text, for the one place that uses it (auth check, database connect)."""
    return None if value is None else value.get_secret_value()


class ServeConfig(Section):
    """The OpenAI-compatible Ray Serve endpoint (owned by rl_service/serving/)."""

    enabled: bool = False
    """Serve the current policy while training and hot-swap each synced version."""
    host: str = "127.0.0.1"
    """Bind address (loopback by default). Any other address needs an API key (`api_key` or
    $RL_SERVICE_API_KEY): without one, anyone who reaches the port could generate and write the
    feedback that becomes reward-model training data, so such a config is refused."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port."""
    model_name: str = "policy"
    """Model id clients send; responses report `<model_name>@v<policy_version>`."""
    engine: EngineConfig = EngineConfig()
    """Engine inside each replica, the same section as `rollout.engine` (also accepted in the
    old flat form: `engine: vllm` beside `dtype`, `kv_cache_gib`)."""
    threads: int = Field(1, ge=1)
    """Intra-op CPU threads of each replica's engine."""
    num_cpus: float = Field(0.0, ge=0)
    """Logical CPUs Ray reserves per replica (0 = none, so serving fits beside training)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per replica."""
    api_key: SecretStr | None = None
    """Bearer key required on every /v1 route (None = $RL_SERVICE_API_KEY, unset = no auth, only
    on a loopback `host`). A secret: run files, checkpoints, W&B and logs show it as `***`."""
    max_tokens: int = Field(64, ge=1)
    """Cap on `max_tokens` per request (larger asks are rejected with 400, not clipped)."""
    default_max_tokens: int = Field(16, ge=1)
    """`max_tokens` when a request gives none (clipped to the context left after the prompt)."""
    max_n: int = Field(8, ge=1)
    """Cap on completions per request (`n`)."""
    max_prompts: int = Field(16, ge=1)
    """Cap on prompts in one /v1/completions request (a list prompt): a request generates at
    most max_prompts x max_n completions under the engine's lock."""
    max_abs_rating: float = Field(1000.0, gt=0)
    """Ratings sent to /v1/feedback must be finite with |rating| <= this (400 otherwise): thumbs
    (+-1), stars and 0-10 scores fit; NaN, infinities and 1e308 do not enter the means that
    `feedback export` builds pairs from."""
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    """Request bodies larger than this are rejected with 413 before being parsed."""
    num_replicas: int = Field(1, ge=1)
    """Fixed replica count (ignored when autoscaling bounds are set)."""
    min_replicas: int | None = Field(None, ge=0)
    """Autoscaling lower bound; set with max_replicas to enable autoscaling."""
    max_replicas: int | None = Field(None, ge=1)
    """Autoscaling upper bound."""
    target_ongoing_requests: float = Field(2.0, gt=0)
    """Autoscaling target of ongoing requests per replica."""
    max_ongoing_requests: int = Field(8, ge=1)
    """Requests a replica runs at once (engine calls); more wait in its queue."""
    max_queued_requests: int = Field(16, ge=0)
    """Requests a replica holds waiting for its engine; past ongoing + queued the app answers 503 in
    the OpenAI error envelope (Serve's own limits sit above, as the outer bound)."""
    update_every: int = Field(1, ge=1)
    """While training: swap to every k-th synced policy version."""
    feedback_db: str = "runs/feedback.sqlite"
    """SQLite file (WAL) for completions and human feedback."""
    feedback_dsn: SecretStr | None = None
    """PostgreSQL DSN; when set it is used instead of feedback_db (needs psycopg). A secret (it may
    hold a password): written as `***` like `api_key`."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_layout(cls, data: Any) -> Any:
        return fold_legacy(data, "engine", "name", LEGACY_ENGINE_FIELDS)

    @field_validator("api_key", "feedback_dsn", mode="before")
    @classmethod
    def _not_the_mask(cls, value: Any) -> Any:
        if value == SECRET_MASK:  # a run file's config.yaml loaded back: the secret is not in it
            raise ValueError(f"{SECRET_MASK!r} is how run files show a secret, not the secret: give it again")
        return value

    @field_serializer("api_key", "feedback_dsn", when_used="json")
    def _masked(self, value: SecretStr | None) -> str | None:
        """Every JSON/YAML dump (config.yaml, controller.json, W&B) shows a set secret as `***`."""
        return None if value is None else SECRET_MASK

    @model_validator(mode="after")
    def _no_open_door(self) -> ServeConfig:
        if not is_loopback(self.host) and self.api_key is None and not os.environ.get("RL_SERVICE_API_KEY"):
            raise ValueError(
                f"serve.host={self.host!r} is not a loopback address and no API key is set "
                "(--api-key, serve.api_key or $RL_SERVICE_API_KEY): refusing to serve unauthenticated"
            )
        return self

    @model_validator(mode="after")
    def _replica_bounds(self) -> ServeConfig:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("serve.min_replicas and serve.max_replicas are set together (autoscaling)")
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("serve.min_replicas must be <= serve.max_replicas")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("serve.default_max_tokens must be <= serve.max_tokens")
        return self
