"""OpenAI's Chat Completions (`/v1/chat/completions`), made durable: the generation is a
background run. A client that drops does not stop it, the reply is saved (its session holds
the request's whole `messages` list, then the reply), and the rest of the stream is there, in
the same chunk format, at `GET /v1/chat/completions/{id}/chunks?after=N`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse

from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.run_spec import RunSpec
from martlet_molt.core.stream_log import until_closed
from martlet_molt.errors import Conflict, InvalidRequest, ProviderError
from martlet_molt.gateway.openai.chat_chunks import (
    ChatChunks,
    CompletionHead,
    completion_object,
    end_error,
)
from martlet_molt.gateway.openai.requests import ChatCompletionsCreate, check_sizes
from martlet_molt.gateway.routes.deps import (
    OPENAI_ERRORS,
    CurrentSettings,
    Principal,
    Runs,
    served_models,
)
from martlet_molt.gateway.routes.runs import resume_point
from martlet_molt.gateway.sse import SseResponse
from martlet_molt.providers.base import ModelOptions

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS, tags=["openai"])


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionsCreate, runs: Runs, settings: CurrentSettings, principal: Principal
) -> JSONResponse | SseResponse:
    """A chat completion, streamed or whole; either way the run goes on (and is saved) if the
    client goes away. The answer carries `X-Run-Id`."""
    body.check()
    upstream = served_models(runs, settings).upstream_name(body.model)
    messages = body.chat_messages()
    check_sizes(messages, settings.max_message_chars, param="messages")
    request: dict[str, Any] = {
        "api": "chat.completions",
        "model": body.model,
        "metadata": body.metadata or {},
        "input_count": len(messages),
    }
    spec = RunSpec(
        messages=messages,
        principal=principal,
        instructions="",
        options=ModelOptions(upstream, body.temperature, body.top_p, body.token_limit),
        request=request,
    )
    log = await runs.start(spec)
    created = log.created_at if isinstance(log, LocalLog) else datetime.now(UTC)
    head = CompletionHead(log.run_id, int(created.timestamp()), body.model)
    headers = {"X-Run-Id": log.run_id, "X-Session-Id": log.session_id}
    if body.stream:
        return SseResponse(
            log,
            encoder=ChatChunks(head, include_usage=body.include_usage),
            ping_seconds=settings.sse_ping_seconds,
            headers=headers,
            metrics=runs.metrics,
        )
    await until_closed(log)
    end = dict(log.events_after(log.last_seq - 1)[-1].data or {})
    error = end_error(end)
    if error is not None:
        if end.get("status") == "cancelled":
            raise Conflict(f"run {log.run_id} was cancelled", run_id=log.run_id)
        raise ProviderError(str(error["message"]), run_id=log.run_id)
    return JSONResponse(completion_object(head, log.full_content, end), headers=headers)


@router.get("/chat/completions/{completion_id}/chunks", response_class=SseResponse)
async def resume_chat_completion(
    completion_id: str,
    runs: Runs,
    settings: CurrentSettings,
    principal: Principal,
    after: Annotated[int | None, Query(ge=0, description="Send chunks after this SSE id.")] = None,
    include_usage: bool = False,
    last_event_id: Annotated[str | None, Header()] = None,
) -> SseResponse:
    """The rest of a completion's stream, in the same chunk format: the chunks after `after`
    (or `Last-Event-ID`), then live until `[DONE]`."""
    point = resume_point(after, last_event_id)
    record = await runs.get_record(completion_id, principal)
    model = str((record.request or {}).get("model") or served_models(runs, settings).default)
    log = await runs.get_log(completion_id, principal, point)
    if point > log.last_seq:
        raise InvalidRequest(
            f"cannot resume after {point}: completion {completion_id} has {log.last_seq} "
            "events so far",
            param="after",
        )
    head = CompletionHead(record.run_id, int(record.created_at.timestamp()), model)
    return SseResponse(
        log,
        encoder=ChatChunks(head, after=point, include_usage=include_usage),
        ping_seconds=settings.sse_ping_seconds,
        headers={"X-Run-Id": log.run_id, "X-Session-Id": log.session_id},
        metrics=runs.metrics,
    )
