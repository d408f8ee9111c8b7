"""The text of a run's stream log, held once: deltas keep no string of their own."""

from __future__ import annotations

from bisect import bisect_right


class LogText:
    """A run's text, held once and compactly: recent pieces are joined into chunks of a few
    KB, so a token costs its characters rather than a string object of its own."""

    SEAL_PIECES = 256
    MERGE_BELOW_CHARS = 4096

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.starts: list[int] = []
        self.tail: list[str] = []
        self.sealed = 0

    def add(self, piece: str) -> None:
        """Append one delta's text."""
        self.tail.append(piece)
        if len(self.tail) >= self.SEAL_PIECES:
            self.seal()

    def seal(self) -> None:
        """Join the recent pieces into a chunk (before a read that needs them)."""
        if not self.tail:
            return
        joined = "".join(self.tail)
        self.tail.clear()
        if self.chunks and len(self.chunks[-1]) < self.MERGE_BELOW_CHARS:
            self.chunks[-1] += joined
        else:
            self.chunks.append(joined)
            self.starts.append(self.sealed)
        self.sealed += len(joined)

    def slice(self, start: int, end: int) -> str:
        """Characters [start, end) of one delta (deltas never straddle two chunks)."""
        if end > self.sealed:
            self.seal()
        index = bisect_right(self.starts, start) - 1
        base = self.starts[index]
        return self.chunks[index][start - base : end - base]

    def pieces(self, start: int, end: int) -> list[str]:
        """Characters [start, end) of the whole text as the chunks that hold them, cut at both
        ends but not joined (a chunk wholly inside is the chunk itself, not a copy)."""
        if end > self.sealed:
            self.seal()
        if start >= end:
            return []
        index = bisect_right(self.starts, start) - 1
        pieces: list[str] = []
        while index < len(self.chunks) and self.starts[index] < end:
            base = self.starts[index]
            pieces.append(self.chunks[index][max(start - base, 0) : end - base])
            index += 1
        return pieces

    def whole(self) -> str:
        """The whole text as one string (joined once, then kept joined)."""
        self.seal()
        if len(self.chunks) > 1:
            self.chunks = ["".join(self.chunks)]
            self.starts = [0]
        return self.chunks[0] if self.chunks else ""
