"""Settings from ``CQRSKIT_*`` environment variables (and CLI flags that override them)."""

from __future__ import annotations

from pydantic import Field
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
    command_retries: int = Field(default=5, ge=1, le=100)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    log_level: str = "info"
