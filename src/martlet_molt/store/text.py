"""Long texts, saved in parts: a reply of megabytes never becomes one string in the gateway nor
one value in the database.

SQLite copies a bound text parameter and then builds the whole row as one record, so saving a
10 MB reply as one value costs 20 MB per row that holds it, and the allocator keeps that high
water for good. A text longer than `PART_CHARS` is therefore stored as consecutive rows of at
most `PART_CHARS` characters (`run_parts`, `message_parts`); a shorter one stays inline in its
row, as before, so the common reply costs no extra statement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

PART_CHARS = 64 * 1024
"""The most characters one saved part holds: what a statement binds at most for a text."""


@dataclass(frozen=True, slots=True)
class TextPieces:
    """A text handed to the store as its consecutive pieces (a run's log holds its reply as
    chunks of a few KB): saving it never joins them into one string."""

    pieces: Sequence[str]

    def __len__(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    def __str__(self) -> str:
        return "".join(self.pieces)

    def __contains__(self, needle: str) -> bool:
        # Only single characters are looked for (NUL); a longer needle could straddle pieces.
        return any(needle in piece for piece in self.pieces)


StoredText = str | TextPieces
"""Text on its way into the store: one string, or the pieces of a long one."""


def parts_of(text: StoredText, size: int = PART_CHARS) -> Iterator[str]:
    """The text as consecutive parts of at most `size` characters, made one at a time:
    small pieces are joined, long ones cut."""
    pending: list[str] = []
    pending_chars = 0
    for piece in (text,) if isinstance(text, str) else text.pieces:
        start = 0
        while start < len(piece):
            take = min(size - pending_chars, len(piece) - start)
            pending.append(piece if take == len(piece) else piece[start : start + take])
            pending_chars += take
            start += take
            if pending_chars == size:
                yield "".join(pending)
                pending.clear()
                pending_chars = 0
    if pending:
        yield "".join(pending)


def inline_or_parts(text: StoredText) -> tuple[str, Iterator[str] | None]:
    """How a row holds `text`: inline when it fits in one part (no parts then), otherwise an
    empty inline value and its parts."""
    if len(text) <= PART_CHARS:
        return str(text), None
    return "", parts_of(text)


def head_of(text: StoredText, size: int) -> str:
    """The first `size` characters of the text, without joining the rest."""
    return text[:size] if isinstance(text, str) else next(parts_of(text, size), "")
