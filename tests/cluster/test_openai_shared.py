"""OpenAI's protocol on several instances: a response started on instance A is resumed,
polled and cancelled on instance B with the official SDK, with the same sequence numbers."""

from __future__ import annotations

import pytest
from openai.types.responses import ResponseStreamEvent

from martlet_molt.testing import FakeUpstream
from tests.cluster.conftest import InstanceFactory
from tests.conftest import script
from tests.openai_api.conftest import TIMEOUT, poll_until_final, sdk_for


@pytest.mark.timeout(60)
def test_a_response_started_on_one_instance_resumes_on_another(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=40, delay=0.01)
    a, b = make_instance(), make_instance()
    with sdk_for(a) as on_a, sdk_for(b) as on_b:
        first: list[ResponseStreamEvent] = []
        stream = on_a.responses.create(model=model, input="count", background=True, stream=True)
        for event in stream:
            first.append(event)
            if len(first) == 8:
                break
        stream.close()
        created = first[0]
        assert created.type == "response.created"
        rest = list(on_b.responses.retrieve(created.response.id, stream=True, starting_after=7))
        whole_on_a = list(on_a.responses.retrieve(created.response.id, stream=True))
        done = poll_until_final(on_b, created.response.id)
    numbers = [e.sequence_number for e in first + rest]
    assert numbers == list(range(len(numbers)))
    text = "".join(e.delta for e in first + rest if e.type == "response.output_text.delta")
    assert text == sent.text
    assert rest[-1].type == "response.completed"
    assert [e.model_dump(mode="json") for e in whole_on_a[8:]] == [
        e.model_dump(mode="json") for e in rest
    ]
    assert done.output_text == sent.text


@pytest.mark.timeout(60)
def test_a_response_is_cancelled_from_the_other_instance(
    make_instance: InstanceFactory, upstream: FakeUpstream, model: str
) -> None:
    sent = script(upstream, model, token_count=50, stall_after=4)
    a, b = make_instance(), make_instance()
    with sdk_for(a) as on_a, sdk_for(b) as on_b:
        created = on_a.responses.create(model=model, input="go", background=True)
        assert upstream.wait_until(
            lambda u: any(r.model == model and r.chunks_sent >= 4 for r in u.records), TIMEOUT
        )
        cancelled = on_b.responses.cancel(created.id)
        again = on_a.responses.cancel(created.id)
    assert cancelled.status == again.status == "cancelled"
    assert cancelled.output_text == "".join(sent.chunks[:4])
    assert upstream.wait_until(
        lambda u: any(r.model == model and r.client_disconnected for r in u.records), TIMEOUT
    )
