"""Settings from ``CQRSKIT_*`` environment variables (and CLI flags that override them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Service configuration; every field reads ``CQRSKIT_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CQRSKIT_", extra="ignore")

    database_url: str = "sqlite:///data/orders.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    migrate: bool = True
    pool_size: int = Field(default=10, ge=1, le=500)
    run_projections: bool = True
    projection_batch_size: int = Field(default=500, ge=1, le=100_000)
    projection_poll_interval: float = Field(default=1.0, gt=0, le=60)
    projection_max_retries: int | None = Field(default=None, ge=0, le=100)
    """Retries of a failing projection handler before its policy applies (``None``: each
    projection's own ``max_retries``)."""
    projection_on_failure: Literal["stop", "park"] | None = None
    """``stop`` or ``park`` for every projection (``None``: each projection's ``on_failure``)."""
    lag_warn_seconds: float | None = Field(default=30.0, ge=0)
    """Lag (age of the oldest unapplied event) that logs a warning and marks ``warn``."""
    lag_fail_seconds: float | None = Field(default=300.0, ge=0)
    """Lag that turns ``/health/projections`` to 503."""
    lag_warn_events: int | None = Field(default=None, ge=1)
    lag_fail_events: int | None = Field(default=None, ge=1)
    lag_check_interval: float = Field(default=5.0, gt=0, le=3600)
    """How often a runtime running projections checks lag thresholds (for log warnings)."""
    command_retries: int = Field(default=5, ge=1, le=100)
    aggregate_cache_size: int = Field(default=4096, ge=0, le=10_000_000)
    """Aggregates the command bus keeps in memory per process (0 turns the cache off)."""
    snapshot_every: int = Field(default=100, ge=0, le=1_000_000)
    """Snapshot a snapshottable aggregate every N events (0 turns snapshots off)."""
    api_keys: SecretStr | None = None
    """Turns on API-key auth: JSON ``{"<key>": {"user_id", "roles"}}`` or ``key=user:role|...``."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    body_timeout: float = Field(default=20.0, gt=0, le=600)
    """Longest a request body may take to arrive whole (slower: 408; keep under
    ``request_timeout``, which would otherwise answer 503 first)."""
    max_header_bytes: int = Field(default=65_536, ge=1024, le=16_777_216)
    """Largest request line plus headers ``cqrskit serve`` reads (larger: 431)."""
    header_timeout: float = Field(default=10.0, gt=0, le=600)
    """Longest ``cqrskit serve`` waits for a complete request head (slower: 408), and drains
    the rest of a body it answered early before closing the connection."""
    request_timeout: float = Field(default=30.0, gt=0, le=600)
    """Longest an HTTP request may take before it is answered 503 with ``Retry-After``."""
    database_connect_timeout: float = Field(default=5.0, gt=0, le=300)
    """Longest connecting to PostgreSQL may take (seconds)."""
    database_command_timeout: float = Field(default=30.0, gt=0, le=3600)
    """Longest a PostgreSQL query, or a wait for a pooled connection, may take (seconds)."""
    log_level: str = "info"
    consistency_timeout: float = Field(default=5.0, ge=0, le=300)
    """Longest a query given a consistency token waits for its projections (seconds)."""
    consistency_poll_interval: float = Field(default=0.05, gt=0, le=10)
    """How often waiting queries read the checkpoints of projections run elsewhere."""
    redis_url: str | None = None
    """Turns on the Redis query cache (``redis://host:6379/0``)."""
    redis_prefix: str = Field(default="cqrskit", min_length=1, max_length=100)
    cache_ttl: float = Field(default=300.0, gt=0, le=86_400)
    cache_timeout: float = Field(default=0.25, gt=0, le=10)
    nats_url: str | None = None
    """Turns on publishing integration events to NATS JetStream (``nats://host:4222``)."""
    nats_stream: str = Field(default="CQRSKIT_EVENTS", pattern=r"^[A-Za-z0-9_\-]{1,100}$")
    nats_subject_prefix: str = Field(
        default="cqrskit.events", pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length=200
    )
    nats_duplicate_window: float = Field(default=120.0, gt=0, le=7 * 86_400)
    """Seconds JetStream drops a republished event id (the stream's ``duplicate_window``)."""
