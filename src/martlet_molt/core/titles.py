"""Session titles: what a chat is called in every list, whichever browser or terminal shows it.

A new session is titled after its first user message (one line, cut on a word boundary), when
that message is saved; a person may rename it. Both rules live here, so the store, the
migration that titles older sessions, and the API agree on what a title can be.
"""

from __future__ import annotations

import re
import unicodedata

DEFAULT_TITLE_CHARS = 60
"""The longest title made from a message; a longer message is cut at a word boundary."""

MAX_TITLE_CHARS = 200
"""The longest title a person may give."""

TITLE_SOURCE_CHARS = 1000
"""How much of a message is read to title it: enough for any leading blank space."""

_ELLIPSIS = "…"
_SPACE = re.compile(r"\s+")
_MIN_WORD_CUT = DEFAULT_TITLE_CHARS // 3
"""A cut at a word boundary leaves at least this much; otherwise the word is cut instead."""
_NOT_IN_A_LINE = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Control characters, lone surrogates and line or paragraph separators."""


def _breaks_a_line(character: str) -> bool:
    return unicodedata.category(character) in _NOT_IN_A_LINE


def one_line(text: str) -> str:
    """The text on one line: every run of white space (line breaks included) is one space."""
    return _SPACE.sub(" ", text).strip()


def title_from_message(message: str, limit: int = DEFAULT_TITLE_CHARS) -> str | None:
    """A title for a session whose first user message is `message`: its first `limit`
    characters on one line, cut after the last whole word and ending in `…` when it had to
    be cut. None when the message has no visible text (nothing to call the chat)."""
    head = message[:TITLE_SOURCE_CHARS]
    text = one_line("".join(" " if _breaks_a_line(c) else c for c in head))
    if not text:
        return None
    if len(text) <= limit:
        return text
    room = limit - len(_ELLIPSIS)
    cut = text[: room + 1].rfind(" ")
    head = text[:cut] if cut >= _MIN_WORD_CUT else text[:room]
    return head.rstrip(" ,.;:-") + _ELLIPSIS


def checked_title(title: str) -> str:
    """A title a person gave, stripped; ValueError (with the reason) when it is blank, longer
    than `MAX_TITLE_CHARS`, or not one line of printable text."""
    stripped = title.strip()
    if not stripped:
        raise ValueError("title must not be blank")
    if len(stripped) > MAX_TITLE_CHARS:
        raise ValueError(f"title must be at most {MAX_TITLE_CHARS} characters")
    if any(_breaks_a_line(c) for c in stripped):
        raise ValueError("title must be one line of text, without control characters")
    return stripped
