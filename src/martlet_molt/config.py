"""One place for every setting: the environment (and an optional `.env`) decides.

Defaults need no service: SQLite on disk, loopback only, and a small local model on the CPU
until an OpenAI-compatible provider is configured.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./martlet.db"
DEFAULT_LOCAL_MAX_TOKENS = 1024


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
        default=None,
        repr=False,
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        description="Key for the upstream.",
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
        description="Any OpenAI-compatible `/v1` URL (OpenAI, vLLM, Ollama, llama.cpp, ...).",
    )
    provider: Literal["auto", "openai", "local"] = Field(
        default="auto",
        description=(
            "`openai`, `local`, or `auto`: openai when `OPENAI_API_KEY` or `OPENAI_BASE_URL` is "
            "set, else the local model."
        ),
    )
    model: str = Field(
        default="gpt-4o-mini",
        description="Model name sent upstream (the local model answers to its file name).",
    )
    model_aliases: dict[str, str] = Field(
        default_factory=dict[str, str],
        description=(
            "More model names the OpenAI-compatible API serves, each mapped to the upstream's "
            'name, as JSON: `{"gpt-4o-mini": "qwen2.5:7b"}`.'
        ),
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Upper bound on tokens per model call, sent as `max_tokens` when set.",
    )
    local_model: str | None = Field(
        default=None, description="A GGUF file for the local model; default: packaged SmolLM2."
    )
    local_threads: int | None = Field(
        default=None, ge=1, description="Threads for the local model; default: the CPU count."
    )
    local_parallel: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Concurrent local generations (slots); more runs wait in its queue.",
    )
    local_context: int = Field(default=4096, ge=256, description="Context tokens per slot.")
    local_max_tokens: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Tokens per local reply when the request sets no `max_tokens` (a reply cut there is "
            "`completed`, with `finish_reason: length`); default: `MARTLET_MAX_TOKENS` if set, "
            f"else {DEFAULT_LOCAL_MAX_TOKENS}."
        ),
    )
    system_prompt: str = Field(
        default="", description="A system message put first in every model call."
    )
    tools: str = Field(
        default="",
        description=(
            "Built-in and plug-in tools to offer the model, comma-separated: `current_time`, "
            "`calculator`, or a plug-in's name."
        ),
    )
    max_tool_rounds: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Model-and-tools round trips per run; the last round offers no tools.",
    )
    mcp_config: str | None = Field(
        default=None,
        description=(
            "A JSON file of MCP servers whose tools the model may call (`mcpServers`; see "
            "docs/tools.md)."
        ),
    )
    tool_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest one tool call may take; the model then gets `error: tool timed out`.",
    )
    tool_result_max_chars: int = Field(
        default=20_000,
        ge=100,
        description="A longer tool result is cut, ending `[truncated: N more characters]`.",
    )
    upstream_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Connect and send timeout towards the upstream."
    )
    upstream_idle_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description=(
            "No byte from the upstream for this long fails the run (partial reply kept); "
            "mid-reply it is noticed within a quarter more."
        ),
    )
    upstream_max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description=(
            "Retries (with backoff, honouring `Retry-After`) of 429, 5xx and connection errors "
            "before the stream starts."
        ),
    )

    # Store.
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        description="SQLite (`sqlite:///path.db`) or PostgreSQL (`postgresql+asyncpg://user@host/db`).",
    )

    # Several instances: a shared stream log on Redis, leases on the runs each instance owns.
    redis_url: str | None = Field(
        default=None,
        description=(
            "Redis shared by several instances (needs a PostgreSQL `MARTLET_DATABASE_URL`); "
            "unset: one process, no service needed."
        ),
    )
    redis_prefix: str = Field(
        default="martlet",
        min_length=1,
        description="Namespace of every Redis key, so deployments can share one Redis.",
    )
    run_lease_seconds: float = Field(
        default=10.0,
        gt=0,
        description="An owner that stops renewing loses its runs to another instance this late.",
    )
    instance_id: str | None = Field(
        default=None, description="This instance's name in leases and logs; default: random."
    )

    # Runs and their stream logs.
    run_retention_seconds: float = Field(
        default=900.0,
        ge=0,
        description=(
            "How long a finished run's log stays in memory; later resumes are answered from "
            "the store."
        ),
    )
    max_reply_chars: int = Field(
        default=1_000_000,
        ge=1,
        description="A longer reply ends the run as `failed`, keeping what was generated.",
    )
    max_active_runs: int = Field(default=1_000, ge=1, description="More concurrent runs get `429`.")
    max_held_runs: int = Field(
        default=2_000,
        ge=1,
        description="Finished stream logs held in memory at most (the oldest evicted first).",
    )
    max_held_chars: int = Field(
        default=200_000_000, ge=1, description="Characters held by finished logs at most."
    )
    eviction_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often finished logs past their retention are dropped."
    )
    checkpoint_seconds: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Partial replies reach the store at most this late (one batched write for all live "
            "runs)."
        ),
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long running runs may finish before they are interrupted.",
    )
    save_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a finished run's save is retried while the database is down.",
    )

    # HTTP edge.
    sse_ping_seconds: float = Field(
        default=15.0,
        gt=0,
        description="A `: ping` comment after this much silence on a stream (keeps proxies open).",
    )
    max_message_chars: int = Field(
        default=100_000, ge=1, description="Longer user messages get `422`."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="Larger request bodies get 413 and are not read."
    )

    # Security.
    api_keys: str = Field(
        default="",
        repr=False,
        description="Comma-separated API keys; any key turns on bearer auth (one principal each).",
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Allow serving a non-loopback address with no API keys."
    )
    cors_origins: str = Field(
        default="", description="Comma-separated origins allowed by CORS; empty turns CORS off."
    )

    # Logging.
    log_level: str = Field(
        default="INFO",
        description="`DEBUG` adds state changes; nothing is logged per chunk above `DEBUG`.",
    )

    @property
    def provider_configured(self) -> bool:
        """Whether a remote (OpenAI-compatible) upstream is configured."""
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def provider_kind(self) -> Literal["openai", "local"]:
        """Which provider answers: `auto` means openai when configured, else the local model."""
        if self.provider == "auto":
            return "openai" if self.provider_configured else "local"
        return self.provider

    @property
    def local_reply_cap(self) -> int:
        """The local model's `max_tokens` when a request gives none. A small model can loop
        until its context is full, so its replies always have a bound: the most specific
        setting given, else `DEFAULT_LOCAL_MAX_TOKENS`."""
        return self.local_max_tokens or self.max_tokens or DEFAULT_LOCAL_MAX_TOKENS

    @property
    def enabled_tools(self) -> list[str]:
        """The names in `MARTLET_TOOLS`, cleaned."""
        return [name.strip() for name in self.tools.split(",") if name.strip()]

    @property
    def api_key_list(self) -> list[str]:
        """The keys in `MARTLET_API_KEYS`, cleaned (hash them; never log them)."""
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        """The origins in `MARTLET_CORS_ORIGINS`, cleaned (a browser's `Origin` never ends with
        `/`); empty means CORS is off."""
        origins = (origin.strip().rstrip("/") for origin in self.cors_origins.split(","))
        return [origin for origin in origins if origin]

    @property
    def uses_sqlite(self) -> bool:
        """Whether the store is a SQLite file (one machine's, one process's at a time)."""
        return self.database_url.startswith("sqlite")

    def serving_refusal(self, *, workers: int = 1) -> str | None:
        """Why these settings cannot serve with this many worker processes, in one line, or
        None. Several processes only share runs through Redis, and Redis only helps when they
        also share one database, which SQLite cannot be."""
        if workers > 1 and not self.redis_url:
            return (
                f"--workers {workers} needs MARTLET_REDIS_URL: without Redis, runs live in one "
                "process and another worker could not see them"
            )
        if self.redis_url and self.uses_sqlite:
            return (
                "MARTLET_REDIS_URL needs a PostgreSQL MARTLET_DATABASE_URL: several instances "
                "need PostgreSQL to share sessions and runs, and SQLite is one process's file"
            )
        return None
