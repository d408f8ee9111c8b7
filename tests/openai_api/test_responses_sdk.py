"""The Responses API, driven by OpenAI's Python SDK: background mode, resume by
`starting_after`, the stream helper, polling, cancel, conversations and the store."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI
from openai.types.responses import ResponseStreamEvent

from martlet_molt.core.runs import RunManager
from martlet_molt.testing import FakeUpstream
from tests.conftest import GatewayFactory, script
from tests.gateway_server import GatewayServer
from tests.openai_api.conftest import TIMEOUT, poll_until_final, sdk_for

OPENING = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def _numbers(events: Sequence[ResponseStreamEvent[Any]]) -> list[int]:
    return [event.sequence_number for event in events]


def _deltas(events: Sequence[ResponseStreamEvent[Any]]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def _wire(events: Sequence[ResponseStreamEvent[Any]]) -> list[dict[str, Any]]:
    return [event.model_dump(mode="json") for event in events]


def test_background_stream_dropped_then_resumed_gives_exactly_the_rest(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=40, delay=0.01)
    first: list[ResponseStreamEvent] = []
    with sdk.responses.create(model=model, input="count", background=True, stream=True) as stream:
        for event in stream:
            first.append(event)
            if len(first) == 7:
                break  # the connection drops here; the run goes on
    response_id = first[0].response.id if first[0].type == "response.created" else ""
    assert [e.type for e in first[:4]] == OPENING
    assert first[0].type == "response.created"
    assert first[0].response.status == "queued"
    assert first[0].response.background is True
    k = first[-1].sequence_number

    rest = list(sdk.responses.retrieve(response_id, stream=True, starting_after=k))

    assert _numbers(first) == list(range(7))
    assert _numbers(rest) == list(range(k + 1, k + 1 + len(rest)))
    assert [e.type for e in rest[-4:]] == [*CLOSING, "response.completed"]
    assert _deltas(first) + _deltas(rest) == sent.text
    final = rest[-1]
    assert final.type == "response.completed"
    assert final.response.status == "completed"
    assert final.response.output_text == sent.text
    assert final.response.id == response_id
    usage = final.response.usage
    assert usage is not None
    assert usage.output_tokens == 40
    # Read again from the start: the same events, with the same numbers.
    whole = list(sdk.responses.retrieve(response_id, stream=True))
    assert _wire(whole[k + 1 :]) == _wire(rest)
    assert [e.type for e in whole[:4]] == OPENING


def test_the_sdk_stream_helper_resumes_by_response_id(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    """`responses.stream(response_id=…, starting_after=n)` re-reads from the first event and
    needs the opening and the terminal event to build its final response."""
    sent = script(upstream, model, token_count=30, delay=0.01)
    created = sdk.responses.create(model=model, input="count", background=True)
    assert created.status in ("queued", "in_progress")
    with sdk.responses.stream(response_id=created.id, starting_after=10) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[0].sequence_number == 11
    assert _numbers(events) == list(range(11, 11 + len(events)))
    assert final.output_text == sent.text
    assert final.status == "completed"


def test_polling_a_background_response_until_it_completes(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=20, delay=0.01)
    created = sdk.responses.create(
        model=model,
        input=[{"role": "user", "content": "count"}],
        instructions="Count.",
        background=True,
        metadata={"ticket": "42"},
        temperature=0.5,
        max_output_tokens=100,
    )
    done = poll_until_final(sdk, created.id)
    assert done.status == "completed"
    assert done.output_text == sent.text
    assert done.instructions == "Count."
    assert done.metadata == {"ticket": "42"}
    assert done.temperature == 0.5
    assert done.max_output_tokens == 100
    body = [r.body for r in upstream.records if r.model == model][-1]
    assert body["messages"] == [
        {"role": "system", "content": "Count."},
        {"role": "user", "content": "count"},
    ]
    assert (body["temperature"], body["max_tokens"]) == (0.5, 100)


def test_a_blocking_create_answers_the_whole_response(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, tokens=["Hé", "llo\n", "😀"])
    response = sdk.responses.create(model=model, input="hi")
    assert response.status == "completed"
    assert response.output_text == sent.text
    assert response.background is False
    message = response.output[0]
    assert message.type == "message"
    assert message.status == "completed"


def test_cancel_twice_stops_the_upstream_and_keeps_the_partial_text(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=50, stall_after=5)
    created = sdk.responses.create(model=model, input="go", background=True)
    assert upstream.wait_until(
        lambda u: any(r.model == model and r.chunks_sent >= 5 for r in u.records), TIMEOUT
    )
    first = sdk.responses.cancel(created.id)
    second = sdk.responses.cancel(created.id)
    assert first.status == second.status == "cancelled"
    assert first.output_text == second.output_text == "".join(sent.chunks[:5])
    assert upstream.wait_until(
        lambda u: any(r.model == model and r.client_disconnected for r in u.records), TIMEOUT
    )
    events = list(sdk.responses.retrieve(created.id, stream=True))
    assert _numbers(events) == list(range(len(events)))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"
    assert sdk.responses.retrieve(created.id).status == "cancelled"


def test_previous_response_id_continues_the_conversation(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, tokens=["Paris."])
    first = sdk.responses.create(model=model, input="Capital of France?", instructions="Be brief.")
    second = sdk.responses.create(model=model, input="And of Italy?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    body = [r.body for r in upstream.records if r.model == model][-1]
    # Instructions are not carried over, as with OpenAI's API.
    assert body["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    items = sdk.responses.input_items.list(second.id, order="asc")
    assert [(i.type, getattr(i, "role", None)) for i in items.data] == [("message", "user")]
    # Branching from a response that was already continued is refused, by name.
    with pytest.raises(BadRequestError) as refused:
        sdk.responses.create(model=model, input="x", previous_response_id=first.id)
    assert refused.value.body is not None
    assert "previous_response_id" in str(refused.value.body)


def test_resume_after_eviction_gives_the_same_events_from_the_store(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(run_retention_seconds=0, eviction_interval_seconds=0.2)
    runs: RunManager = gateway.app.state.runs
    script(upstream, model, tokens=["one ", "two\n", "three ", "😀"], delay=0.01)
    with sdk_for(gateway) as client:
        live = list(client.responses.create(model=model, input="n", stream=True))
        response_id = live[0].response.id if live[0].type == "response.created" else ""
        deadline = time.monotonic() + TIMEOUT
        while runs.logs.get(response_id) is not None:
            assert time.monotonic() < deadline, "the finished log was never evicted"
            time.sleep(0.05)
        resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=5))
        whole = list(client.responses.retrieve(response_id, stream=True))
    assert runs.logs.get(response_id) is None
    assert _wire(resumed) == _wire(live)[6:]
    assert _wire(whole) == _wire(live)


def test_a_failed_upstream_ends_in_response_failed_not_a_top_level_error(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=10, fail_after=3)
    events = list(sdk.responses.create(model=model, input="x", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.code == "server_error"
    assert "dropped" in failed.error.message
    assert failed.output_text == "".join(f"tok{i} " for i in range(3))


def test_a_reply_cut_at_its_token_limit_is_incomplete(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=3, finish_reason="length")
    response = sdk.responses.create(model=model, input="x", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    events = list(sdk.responses.retrieve(response.id, stream=True))
    assert events[-1].type == "response.incomplete"


def test_errors_have_openai_s_shape(sdk: OpenAI, gateway: GatewayServer, model: str) -> None:
    with pytest.raises(NotFoundError) as unknown:
        sdk.responses.create(model="no-such-model", input="x")
    assert unknown.value.body == {
        "message": unknown.value.body["message"] if isinstance(unknown.value.body, dict) else "",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(BadRequestError) as unsupported:
        sdk.responses.create(model=model, input="x", tools=[{"type": "web_search"}])
    assert isinstance(unsupported.value.body, dict)
    assert unsupported.value.body["param"] == "tools"
    with pytest.raises(BadRequestError) as not_stored:
        sdk.responses.create(model=model, input="x", store=False)
    assert isinstance(not_stored.value.body, dict)
    assert not_stored.value.body["param"] == "store"
    with pytest.raises(NotFoundError):
        sdk.responses.retrieve("run_nope")
    raw = httpx.post(f"{gateway.url}/v1/responses", json={"model": model}, timeout=TIMEOUT)
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert raw.json()["error"]["param"] == "input"


def test_a_cursor_past_the_end_is_a_clear_400(
    sdk: OpenAI, upstream: FakeUpstream, model: str
) -> None:
    script(upstream, model, token_count=2)
    response = sdk.responses.create(model=model, input="x")
    last = len(list(sdk.responses.retrieve(response.id, stream=True))) - 1
    assert list(sdk.responses.retrieve(response.id, stream=True, starting_after=last)) == []
    with pytest.raises(BadRequestError) as past:
        list(sdk.responses.retrieve(response.id, stream=True, starting_after=last + 1))
    assert isinstance(past.value.body, dict)
    assert past.value.body["param"] == "starting_after"


def test_delete_removes_the_response(sdk: OpenAI, upstream: FakeUpstream, model: str) -> None:
    script(upstream, model, token_count=2)
    response = sdk.responses.create(model=model, input="x")
    sdk.responses.delete(response.id)
    with pytest.raises(NotFoundError):
        sdk.responses.retrieve(response.id)


def test_keys_scope_responses_by_principal(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(api_keys="key-a,key-b")
    script(upstream, model, token_count=2)
    with sdk_for(gateway, "key-a") as a, sdk_for(gateway, "key-b") as b:
        mine = a.responses.create(model=model, input="x")
        assert a.responses.retrieve(mine.id).status == "completed"
        with pytest.raises(NotFoundError):
            b.responses.retrieve(mine.id)
        with pytest.raises(NotFoundError):
            b.responses.create(model=model, input="y", previous_response_id=mine.id)
    unauthorized = httpx.get(f"{gateway.url}/v1/models", timeout=TIMEOUT)
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["type"] == "authentication_error"


def test_models_lists_the_served_names_and_aliases_map_to_the_upstream(
    make_gateway: GatewayFactory, upstream: FakeUpstream, model: str
) -> None:
    gateway = make_gateway(model_aliases={"gpt-4o-mini": model})
    sent = script(upstream, model, token_count=3)
    with sdk_for(gateway) as client:
        assert [m.id for m in client.models.list()] == [model, "gpt-4o-mini"]
        response = client.responses.create(model="gpt-4o-mini", input="x")
    assert response.model == "gpt-4o-mini"
    assert response.output_text == sent.text
    assert [r.body["model"] for r in upstream.records if r.model == model][-1] == model


def test_a_message_over_the_size_limit_is_refused_and_nothing_is_saved(
    make_gateway: GatewayFactory, model: str
) -> None:
    gateway = make_gateway(max_message_chars=10)
    with sdk_for(gateway) as client:
        with pytest.raises(BadRequestError) as too_long:
            client.responses.create(model=model, input="x" * 11)
        with pytest.raises(BadRequestError) as too_long_chat:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "x" * 11}]
            )
    assert isinstance(too_long.value.body, dict)
    assert too_long.value.body["param"] == "input"
    assert isinstance(too_long_chat.value.body, dict)
    assert too_long_chat.value.body["param"] == "messages"
    sessions = httpx.get(f"{gateway.url}/sessions", timeout=TIMEOUT).json()
    assert sessions["total"] == 0
