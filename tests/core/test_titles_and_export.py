"""The pure rules behind titles and exports: how a message becomes a title, which titles a
person may give, and how a chat becomes Markdown and a file name."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from martlet_molt.core.export import content_disposition, filename_stem, to_markdown
from martlet_molt.core.status import RunStatus
from martlet_molt.core.titles import checked_title, title_from_message
from martlet_molt.store.base import MessageRecord, SessionRecord

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("message", "title"),
    [
        ("  Plan a trip\n\tto Lisbon ", "Plan a trip to Lisbon"),
        ("x" * 60, "x" * 60),
        ("x" * 61, "x" * 59 + "…"),
        (
            "Tell me everything about the history of the Portuguese empire, please",
            ("Tell me everything about the history of the Portuguese…"),
        ),
        ("short words then " + "y" * 80, "short words then " + "y" * 42 + "…"),
        ("a \x00 b\x1b[0m\u2028c", "a b [0m c"),
        ("👨‍👩‍👧 family", "👨‍👩‍👧 family"),
        (" \n\t\u2029", None),
        ("", None),
    ],
)
def test_a_title_is_the_first_message_on_one_line(message: str, title: str | None) -> None:
    made = title_from_message(message)
    assert made == title
    assert made is None or (len(made) <= 60 and "\n" not in made)


def test_a_given_title_is_one_line_of_at_most_200_characters() -> None:
    assert checked_title("  Trip 🚋  ") == "Trip 🚋"
    assert checked_title("t" * 200) == "t" * 200
    for bad, reason in (
        ("", "blank"),
        ("  ", "blank"),
        ("t" * 201, "at most 200"),
        ("two\nlines", "one line"),
        ("tab\there", "one line"),
        ("sep\u2028x", "one line"),
    ):
        with pytest.raises(ValueError, match=reason):
            checked_title(bad)


def _session(title: str | None, session_id: str = "s1") -> SessionRecord:
    return SessionRecord(session_id, "", T0, T0, title)


def _message(role: str, content: str, **fields: object) -> MessageRecord:
    values: dict[str, object] = {
        "message_id": 1,
        "session_id": "s1",
        "role": role,
        "content": content,
        "status": RunStatus.COMPLETED,
        "run_id": "r1",
        "created_at": T0,
        **fields,
    }
    return MessageRecord(**values)  # pyright: ignore[reportArgumentType]


def test_markdown_fences_cannot_be_closed_by_what_they_hold() -> None:
    call = {"id": "c`1", "function": {"name": "run", "arguments": "not json ```"}}
    text = to_markdown(
        _session(None),
        [
            _message("assistant", "", tool_calls=[call], status=RunStatus.CANCELLED),
            _message("tool", "````\nresult", tool_call_id="c`1", name="run", duration_ms=42),
        ],
        exported_at=T0,
    )
    assert text.startswith("# Chat s1\n\n- Session: `s1`\n- Started: 2025-01-02 03:04:05 UTC\n")
    assert "## Assistant · cancelled · 2025-01-02 03:04:05 UTC" in text
    assert "**Tool call** `run` · ``c`1``" in text
    assert "````text\nnot json ```\n````" in text
    assert "## Tool result · run · 42 ms · 2025-01-02 03:04:05 UTC" in text
    assert "`````text\n````\nresult\n`````" in text


def test_file_names_come_from_the_title() -> None:
    assert filename_stem(_session("Plan: a trip / to Lisbon?")) == "Plan-a-trip-to-Lisbon"
    assert filename_stem(_session("Café ☕ Ωmega"), ascii_only=True) == "Cafe-mega"
    assert filename_stem(_session("日本語のチャット")) == "日本語のチャット"
    assert filename_stem(_session("日本語", "s.2"), ascii_only=True) == "s.2"
    assert filename_stem(_session(None, "s.3")) == "s.3"
    assert len(filename_stem(_session("word " * 40))) <= 80
    assert content_disposition(_session("Café"), "md") == (
        "attachment; filename=\"Cafe.md\"; filename*=UTF-8''Caf%C3%A9.md"
    )
