"""OpenAI's Responses API (`/v1/responses`): a response is a martlet run, with the same log,
store and cancel. Created in the background or not, streamed or not, it always runs to its end
and is saved; `GET ?stream=true&starting_after=N` resumes it for as long as it is stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from martlet_molt.config import Settings
from martlet_molt.core.conversations import input_messages, session_to_continue
from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.run_spec import RunSpec
from martlet_molt.core.runs import RunManager
from martlet_molt.core.stream_log import StreamLog, until_closed
from martlet_molt.errors import InvalidRequest
from martlet_molt.gateway.openai.input_items import input_item_list
from martlet_molt.gateway.openai.requests import ResponsesCreate, check_sizes
from martlet_molt.gateway.openai.response_events import (
    ResponseEvents,
    last_number,
    response_snapshot,
)
from martlet_molt.gateway.openai.response_object import ResponseHead
from martlet_molt.gateway.routes.deps import (
    OPENAI_ERRORS,
    CurrentSettings,
    Principal,
    Runs,
    served_models,
)
from martlet_molt.gateway.sse import SseResponse
from martlet_molt.providers.base import ModelOptions

router = APIRouter(prefix="/v1", responses=OPENAI_ERRORS, tags=["openai"])


def _stream(
    log: StreamLog, head: ResponseHead, after: int, runs: RunManager, settings: Settings
) -> SseResponse:
    return SseResponse(
        log,
        encoder=ResponseEvents(log, head, after),
        ping_seconds=settings.sse_ping_seconds,
        headers={"X-Run-Id": log.run_id, "X-Session-Id": log.session_id},
        metrics=runs.metrics,
    )


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponsesCreate, runs: Runs, settings: CurrentSettings, principal: Principal
) -> JSONResponse | SseResponse:
    """Create a response. It runs in the background whatever the client does; `stream: true`
    streams its events, `background: true` answers at once, neither waits for the end."""
    body.check()
    served = served_models(runs, settings)
    upstream = served.upstream_name(body.model)
    session_id = None
    if body.previous_response_id is not None:
        session_id = await session_to_continue(runs.store, body.previous_response_id, principal)
    messages = body.messages()
    check_sizes(messages, settings.max_message_chars, param="input")
    request = body.echo(body.model, len(messages))
    spec = RunSpec(
        messages=messages,
        principal=principal,
        session_id=session_id,
        instructions=body.instructions or "",
        options=ModelOptions(upstream, body.temperature, body.top_p, body.max_output_tokens),
        request=request,
    )
    log = await runs.start(spec)
    created = log.created_at if isinstance(log, LocalLog) else datetime.now(UTC)
    head = ResponseHead.of_run(log.run_id, created, request, served.default)
    if body.stream:
        return _stream(log, head, -1, runs, settings)
    if not body.background:
        await until_closed(log)
    return JSONResponse(response_snapshot(log, head), headers={"X-Run-Id": log.run_id})


async def _head(runs: RunManager, settings: Settings, run_id: str, principal: str) -> ResponseHead:
    record = await runs.get_record(run_id, principal)
    default = served_models(runs, settings).default
    return ResponseHead.of_run(record.run_id, record.created_at, record.request, default)


@router.get("/responses/{response_id}", response_model=None)
async def retrieve_response(
    response_id: str,
    runs: Runs,
    settings: CurrentSettings,
    principal: Principal,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> JSONResponse | SseResponse:
    """The response as it stands; with `stream=true`, its events after `starting_after`
    (all of them without it), then live until its end, however old it is."""
    head = await _head(runs, settings, response_id, principal)
    log = await runs.get_log(response_id, principal)
    if not stream:
        return JSONResponse(response_snapshot(log, head))
    after = -1 if starting_after is None else starting_after
    last = last_number(log)
    if after > last:
        raise InvalidRequest(
            f"starting_after {after} is past the last event of response {response_id} ({last})",
            param="starting_after",
        )
    return _stream(log, head, after, runs, settings)


@router.post("/responses/{response_id}/cancel")
async def cancel_response(
    response_id: str, runs: Runs, settings: CurrentSettings, principal: Principal
) -> JSONResponse:
    """Cancel a response: the upstream request is closed and the partial reply saved.
    Idempotent: a finished response is returned as it is."""
    head = await _head(runs, settings, response_id, principal)
    await runs.cancel(response_id, principal)
    log = await runs.get_log(response_id, principal)
    return JSONResponse(response_snapshot(log, head))


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, runs: Runs, principal: Principal) -> JSONResponse:
    """Delete a response (cancelled first if it is running) and its turns of the conversation."""
    await runs.get_record(response_id, principal)
    await runs.delete_run(response_id, principal)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    runs: Runs,
    principal: Principal,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> JSONResponse:
    """The messages the response was asked with."""
    record = await runs.get_record(response_id, principal)
    messages = await input_messages(runs.store, record)
    return JSONResponse(input_item_list(messages, order=order, limit=limit, after=after))
