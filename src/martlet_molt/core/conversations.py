"""Conversations as OpenAI's APIs see them: a response continued by `previous_response_id`
is a new run in that response's session, and a response's input is the messages its run saved
when it started."""

from __future__ import annotations

from martlet_molt.errors import InvalidRequest, RunNotFound
from martlet_molt.store.base import MessageRecord, RunRecord, Store


async def session_to_continue(store: Store, previous_run_id: str, principal: str) -> str:
    """The session a response continuing `previous_run_id` runs in. Only the newest response
    of a conversation can be continued: a branch would need a copy of the conversation up to
    that point, which the gateway does not make."""
    record = await store.get_run(previous_run_id)
    if record is None or record.principal != principal:
        raise RunNotFound(
            f"previous response {previous_run_id} not found", param="previous_response_id"
        )
    messages = await store.list_messages(record.session_id)
    if messages and messages[-1].run_id != previous_run_id:
        raise InvalidRequest(
            f"response {previous_run_id} was already continued by a later response; "
            "continue the latest one (branching a conversation is not supported)",
            param="previous_response_id",
        )
    return record.session_id


async def input_messages(store: Store, record: RunRecord) -> list[MessageRecord]:
    """The messages a run was asked with (the user's message, or the request's list)."""
    count = int((record.request or {}).get("input_count", 1))
    mine = [m for m in await store.list_messages(record.session_id) if m.run_id == record.run_id]
    return mine[:count]
