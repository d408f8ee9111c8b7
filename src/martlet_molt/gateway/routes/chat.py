"""Asking: a message starts a background run; the answer only reads it."""

from __future__ import annotations

from fastapi import APIRouter

from martlet_molt.config import Settings
from martlet_molt.core.run_spec import RunSpec
from martlet_molt.core.runs import RunManager
from martlet_molt.core.stream_log import StreamLog, until_closed
from martlet_molt.errors import InvalidRequest
from martlet_molt.gateway.native_events import SseFormat
from martlet_molt.gateway.routes.deps import ERRORS, CurrentSettings, Principal, Runs, WireFormat
from martlet_molt.gateway.schemas import ChatRequest, ChatResponse
from martlet_molt.gateway.sse import SseResponse, sse_response

router = APIRouter(responses=ERRORS)


async def _start(
    body: ChatRequest, runs: RunManager, settings: Settings, principal: str
) -> StreamLog:
    if len(body.message) > settings.max_message_chars:
        raise InvalidRequest(
            f"message is {len(body.message)} characters; the limit is {settings.max_message_chars}"
        )
    return await runs.start(
        RunSpec.of_message(
            body.message,
            principal=principal,
            session_id=body.session_id,
            client_request_id=body.client_request_id,
        )
    )


@router.post("/chat", response_model=ChatResponse)
async def chat(
    body: ChatRequest, runs: Runs, settings: CurrentSettings, principal: Principal
) -> ChatResponse:
    """Answer a message and return the whole reply. The run goes on (and is saved) even if
    this request is abandoned."""
    log = await _start(body, runs, settings, principal)
    await until_closed(log)
    return ChatResponse(
        session_id=log.session_id,
        run_id=log.run_id,
        reply=log.full_content,
        status=log.status,
        error=log.error,
    )


@router.post("/chat/stream", response_class=SseResponse)
async def chat_stream(
    body: ChatRequest,
    runs: Runs,
    settings: CurrentSettings,
    principal: Principal,
    wire_format: WireFormat = SseFormat.TEXT,
) -> SseResponse:
    """Answer a message as a stream. The response only reads the run: dropping it loses
    nothing, and `GET /runs/{run_id}/stream` picks up where it left off."""
    log = await _start(body, runs, settings, principal)
    return sse_response(
        log,
        after=0,
        wire_format=wire_format,
        ping_seconds=settings.sse_ping_seconds,
        headers={"X-Session-Id": log.session_id, "X-Run-Id": log.run_id},
        metrics=runs.metrics,
    )
