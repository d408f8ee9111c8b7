"""The HTTP API, one module per concern: chat (asking), runs (state, resume, cancel), sessions,
export, health, tools, and OpenAI's protocol under `/v1` (responses, chat_completions, models).
Every handler is thin: it validates, asks the run manager or the store, and shapes the answer.
Streaming handlers only read a run's log; they never own the run."""

from __future__ import annotations

from fastapi import APIRouter

from martlet_molt.gateway.routes import (
    chat,
    chat_completions,
    export,
    health,
    models,
    responses,
    runs,
    sessions,
    tools,
)

router = APIRouter()
for module in (chat, runs, sessions, export, health, tools, responses, chat_completions, models):
    router.include_router(module.router)

__all__ = ["router"]
