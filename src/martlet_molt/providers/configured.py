"""The provider the settings ask for, opened for the app's lifetime.

`openai` talks to a remote OpenAI-compatible server; `local` first starts llama.cpp's server
in this process and then talks to it through the very same `OpenAIProvider`, so every run
behaves alike whichever model answers.

Each provider's modules are imported when that provider is opened: the openai SDK (its memory:
docs/BENCHMARKS.md, "Measurements behind the code") only when there is an upstream to call,
the local model's only for `local`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from loguru import logger

from martlet_molt.config import Settings
from martlet_molt.providers.base import Provider

if TYPE_CHECKING:
    from martlet_molt.providers.local import LocalModelConfig
    from martlet_molt.providers.openai import OpenAIProvider


def local_model_config(settings: Settings) -> LocalModelConfig:
    """The local model's configuration; raises `LocalModelError` naming a bad model path."""
    from martlet_molt.providers.local import LocalModelConfig, default_threads, resolve_model_path

    return LocalModelConfig(
        path=resolve_model_path(settings.local_model),
        threads=settings.local_threads or default_threads(),
        parallel=settings.local_parallel,
        context=settings.local_context,
    )


def _remote(
    settings: Settings, *, max_tokens: int | None = None, **overrides: str
) -> OpenAIProvider:
    from martlet_molt.providers.openai import OpenAIProvider

    values: dict[str, str | None] = {
        "model": settings.model,
        "api_key": settings.openai_api_key,
        "base_url": settings.openai_base_url,
        "label": "openai",
    }
    values.update(overrides)
    return OpenAIProvider(
        model=values["model"] or settings.model,
        api_key=values["api_key"],
        base_url=values["base_url"],
        label=values["label"] or "openai",
        timeout=settings.upstream_timeout_seconds,
        idle_timeout=settings.upstream_idle_timeout_seconds,
        max_retries=settings.upstream_max_retries,
        max_tokens=max_tokens if max_tokens is not None else settings.max_tokens,
    )


@asynccontextmanager
async def open_provider(settings: Settings) -> AsyncGenerator[Provider | None]:
    """Yield the configured provider (None when `openai` is chosen but not configured:
    chat then answers 503), and release it afterwards."""
    if settings.provider_kind == "openai":
        provider = _remote(settings) if settings.provider_configured else None
        if provider is None:
            logger.warning(
                "MARTLET_PROVIDER=openai but neither OPENAI_API_KEY nor OPENAI_BASE_URL is "
                "set: chat answers 503"
            )
        try:
            yield provider
        finally:
            if provider is not None:
                await provider.aclose()
        return
    from martlet_molt.providers.local import LocalModelServer

    server = LocalModelServer(local_model_config(settings))
    await asyncio.to_thread(server.start)
    provider = _remote(
        settings,
        max_tokens=settings.local_reply_cap,
        model=server.model_name,
        base_url=server.base_url,
        label="local llama.cpp",
    )
    try:
        yield provider
    finally:
        await provider.aclose()
        await asyncio.to_thread(server.stop)
