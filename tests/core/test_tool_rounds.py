"""Rebuilding a run's session messages from its replay index (what recovery and a lease
takeover save for a run whose process died) gives what the agent itself would have saved."""

from __future__ import annotations

from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.core.tool_rounds import UNANSWERED, saved_run_messages
from martlet_molt.store.base import NewMessage

INTERRUPTED = RunStatus.INTERRUPTED


def _log() -> LocalLog:
    log = LocalLog("s1", run_id="r1")
    log.start()
    return log


def _saved(log: LocalLog) -> list[tuple[str, str, str | None, str | None, list[str]]]:
    messages = saved_run_messages("r1", log.full_content, log.replay_index(), INTERRUPTED)
    assert all(m.run_id == "r1" for m in messages)
    assert messages[-1].status is INTERRUPTED
    return [_brief(m) for m in messages]


def _brief(m: NewMessage) -> tuple[str, str, str | None, str | None, list[str]]:
    names = [call["function"]["name"] for call in m.tool_calls or []]
    return (m.role, str(m.content), m.tool_call_id, m.tool_status, names)


def test_a_run_without_tools_is_its_reply() -> None:
    log = _log()
    log.put_sync("Hello ")
    log.put_sync("there")
    assert _saved(log) == [("assistant", "Hello there", None, None, [])]


def test_rounds_with_text_between_them_and_the_reply_after() -> None:
    log = _log()
    log.put_sync("Looking.")
    log.add_tool_call(call_id="a", name="search", arguments='{"q": "x"}')
    log.add_tool_call(call_id="b", name="add", arguments="{}")
    log.add_tool_result(call_id="b", name="add", content="2", duration_ms=3)
    log.add_tool_result(call_id="a", name="search", content="oops", failed=True, duration_ms=40)
    log.add_tool_call(call_id="c", name="add", arguments="{}")  # straight on, no text
    log.add_tool_result(call_id="c", name="add", content="4", duration_ms=1)
    log.put_sync("It is ")
    log.put_sync("4.")
    assert _saved(log) == [
        ("assistant", "Looking.", None, None, ["search", "add"]),
        ("tool", "oops", "a", "failed", []),
        ("tool", "2", "b", "done", []),
        ("assistant", "", None, None, ["add"]),
        ("tool", "4", "c", "done", []),
        ("assistant", "It is 4.", None, None, []),
    ]
    messages = saved_run_messages("r1", log.full_content, log.replay_index(), INTERRUPTED)
    assert [m.duration_ms for m in messages] == [None, 40, 3, None, 1, None]
    assert messages[0].tool_calls is not None
    assert messages[0].tool_calls[0]["function"]["arguments"] == '{"q": "x"}'


def test_a_round_cut_short_answers_its_open_calls_with_an_error() -> None:
    log = _log()
    log.put_sync("Wait.")
    log.add_tool_call(call_id="a", name="slow", arguments="{}")
    log.add_tool_call(call_id="b", name="add", arguments="{}")
    log.add_tool_result(call_id="b", name="add", content="2", duration_ms=3)
    assert _saved(log) == [
        ("assistant", "Wait.", None, None, ["slow", "add"]),
        ("tool", UNANSWERED, "a", "failed", []),
        ("tool", "2", "b", "done", []),
        ("assistant", "", None, None, []),
    ]
