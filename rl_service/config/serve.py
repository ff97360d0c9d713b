"""`serve:` the OpenAI-compatible Ray Serve endpoint (rl_service/serving/)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from rl_service.config.base import Section, fold_legacy
from rl_service.config.engine import LEGACY_ENGINE_FIELDS, EngineConfig


class ServeConfig(Section):
    """The OpenAI-compatible Ray Serve endpoint (owned by rl_service/serving/)."""

    enabled: bool = False
    """Serve the current policy while training and hot-swap each synced version."""
    host: str = "127.0.0.1"
    """Bind address (loopback by default)."""
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
    api_key: str | None = None
    """Bearer key required on every /v1 route (None = $RL_SERVICE_API_KEY, unset = no auth)."""
    max_tokens: int = Field(64, ge=1)
    """Cap on `max_tokens` per request (larger asks are rejected with 400, not clipped)."""
    default_max_tokens: int = Field(16, ge=1)
    """`max_tokens` when a request gives none (clipped to the context left after the prompt)."""
    max_n: int = Field(8, ge=1)
    """Cap on completions per request (`n`)."""
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
    feedback_dsn: str | None = None
    """PostgreSQL DSN; when set it is used instead of feedback_db (needs psycopg)."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_layout(cls, data: Any) -> Any:
        return fold_legacy(data, "engine", "name", LEGACY_ENGINE_FIELDS)

    @model_validator(mode="after")
    def _replica_bounds(self) -> ServeConfig:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("serve.min_replicas and serve.max_replicas are set together (autoscaling)")
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("serve.min_replicas must be <= serve.max_replicas")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("serve.default_max_tokens must be <= serve.max_tokens")
        return self
