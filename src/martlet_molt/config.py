"""One place for every setting: the environment (and an optional `.env`) decides.

Defaults need no service: SQLite on disk, loopback only, no provider (chat answers 503
until one is configured).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./martlet.db"


class Settings(BaseSettings):
    """The gateway's configuration, read once at start-up and passed to `create_app`."""

    model_config = SettingsConfigDict(
        env_prefix="MARTLET_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # Provider: the standard OpenAI variable names, no prefix.
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )
    model: str = "gpt-4o-mini"
    system_prompt: str = ""
    tools: str = Field(
        default="",
        description="Comma-separated built-in tools to enable: current_time, calculator.",
    )
    max_tool_rounds: int = Field(default=8, ge=1, le=64)
    upstream_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Connect and send timeout towards the upstream."
    )
    upstream_idle_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Longest the upstream may send no byte at all."
    )
    upstream_max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of 429, 5xx and connection errors before the stream starts.",
    )

    # Store.
    database_url: str = DEFAULT_DATABASE_URL

    # Runs and their stream logs.
    run_retention_seconds: float = Field(default=900.0, ge=0)
    max_reply_chars: int = Field(default=1_000_000, ge=1)
    max_active_runs: int = Field(default=1_000, ge=1)
    max_held_runs: int = Field(
        default=2_000, ge=1, description="Finished stream logs held in memory at most."
    )
    max_held_chars: int = Field(
        default=200_000_000, ge=1, description="Characters held by finished logs at most."
    )
    eviction_interval_seconds: float = Field(default=5.0, gt=0)
    checkpoint_seconds: float = Field(
        default=1.0, gt=0, description="Partial replies reach the store at most this late."
    )
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)

    # HTTP edge.
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    max_message_chars: int = Field(default=100_000, ge=1)

    # Logging.
    log_level: str = "INFO"

    @property
    def provider_configured(self) -> bool:
        """Whether an upstream model is configured at all."""
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def enabled_tools(self) -> list[str]:
        """The names in `MARTLET_TOOLS`, cleaned."""
        return [name.strip() for name in self.tools.split(",") if name.strip()]
