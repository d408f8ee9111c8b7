"""What the gateway keeps: sessions, their messages, and runs. One protocol, many backends.

Records are plain frozen dataclasses; timestamps are timezone-aware UTC datetimes. A run's
`events` is the compact replay index of its stream log (`core.local_log.LocalLog.replay_index`):
a JSON-serialisable list where an int is a text delta of that many characters of `content`
and an object is any other event. It lets a resume after the in-memory log is evicted answer
with the same sequence numbers as the live run did.

Several instances share one database through leases: the instance that starts a run owns it
and renews its lease; when the lease runs out, another instance takes the run over (it becomes
`interrupted`, keeping its checkpointed text) and the run's fencing token (`fence`) goes up,
so that the old owner's late writes, which carry the old token, are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from martlet_molt.core.status import RunStatus
from martlet_molt.store.text import StoredText

JsonObject = dict[str, Any]

INTERRUPTED_ERROR = "interrupted"
"""The error of a run that stopped because its gateway did (see `core.recovery`)."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A conversation: an ordered list of messages owned by one principal."""

    session_id: str
    principal: str
    created_at: datetime
    updated_at: datetime
    title: str | None = None
    """What lists call it: its first user message's beginning, or the name a person gave it
    (None: no user message yet)."""


@dataclass(frozen=True, slots=True)
class SessionHit:
    """A session a search found, and the passage that matched best: `snippet` is plain text
    on one line, `highlights` the [start, end) offsets of the matched words in it."""

    session: SessionRecord
    snippet: str
    highlights: list[tuple[int, int]]
    matched: Literal["title", "message"]
    """Where the best match is."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message about to be saved. `tool_calls` is OpenAI's list for an assistant turn that
    called tools; `tool_call_id` and `name` belong to a tool result. A long `content` may come
    as `TextPieces`, so that saving it never joins it into one string."""

    role: str
    content: StoredText
    status: RunStatus = RunStatus.COMPLETED
    run_id: str | None = None
    tool_calls: list[JsonObject] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    tool_status: str | None = None
    """A tool result's outcome: `done` or `failed`."""
    duration_ms: int | None = None
    """How long the tool call took."""


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A saved message; `message_id` orders messages within a session."""

    message_id: int
    session_id: str
    role: str
    content: str
    status: RunStatus
    run_id: str | None
    created_at: datetime
    tool_calls: list[JsonObject] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    tool_status: str | None = None
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as saved: the reply so far (or final), its status and what it cost."""

    run_id: str
    session_id: str
    principal: str
    status: RunStatus
    content: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    usage: JsonObject | None = None
    events: list[Any] = field(default_factory=list[Any])
    client_request_id: str | None = None
    owner: str | None = None
    """The instance that runs it (None: a single-process gateway's run)."""
    fence: int = 0
    """The fencing token: 1 when started, one more each time another instance takes it over."""
    lease_expires_at: datetime | None = None
    """Until when the owner holds it, unless renewed (None: no lease, no owner to wait for)."""
    cancel_requested: bool = False
    """Someone asked the owner, wherever it runs, to cancel the run."""
    request: JsonObject | None = None
    """What the request asked, as the API that took it echoes it (None: the native API)."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a live run streamed since its previous checkpoint: the new text and the replay
    index entries of the new events. Checkpoints append; they never rewrite the reply.

    With a `fence`, the checkpoint applies only while the run is unfinished and still carries
    that fencing token: a stale owner's checkpoint is refused."""

    run_id: str
    content: StoredText
    events: list[Any]
    fence: int | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A run an instance believes it owns, with the fencing token it got when it started it."""

    run_id: str
    fence: int


@dataclass(frozen=True, slots=True)
class RenewedLeases:
    """What a lease renewal found: the runs this owner still holds (renewed), and those of
    them someone asked to cancel. A run not in `held` is lost to the owner."""

    held: set[str] = field(default_factory=set[str])
    cancel_requested: set[str] = field(default_factory=set[str])


class Store(Protocol):
    """The persistence the gateway needs, nothing more. Every method but `open`, `close` and
    `release_idle_connections` is one transaction."""

    async def open(self) -> None:
        """Connect and create or migrate the schema."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    async def release_idle_connections(self) -> None:
        """Close the pooled connections no transaction is using, with what they cache (after
        a burst, so that the memory goes back to the system); they are opened again as
        needed."""
        ...

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""
        ...

    async def start_run(
        self,
        *,
        session_id: str,
        principal: str,
        run_id: str,
        user_message: str | None = None,
        inputs: Sequence[NewMessage] = (),
        client_request_id: str | None = None,
        owner: str | None = None,
        lease_seconds: float | None = None,
        request: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """Create the session if new, save the request's messages (`inputs`, or just the
        `user_message`) and a `pending` run with its `request`, atomically. Another
        principal's session raises `SessionNotFound`, a session with an unfinished run
        `SessionBusy` (naming that run); either changes nothing.

        The run gets `owner`, fence 1, and a lease of `lease_seconds` (None: no lease, as a
        single-process gateway runs)."""
        ...

    async def renew_leases(
        self, *, owner: str, leases: Sequence[Lease], lease_seconds: float
    ) -> RenewedLeases:
        """Extend, in one transaction, the leases `owner` still holds: unfinished runs it owns
        with the same fencing token. The others are lost to it and must stop writing."""
        ...

    async def request_cancel(self, run_id: str) -> bool:
        """Flag an unfinished run for cancelling, for its owner to see when it renews; False
        if the run is final or missing."""
        ...

    async def take_over_expired(self, *, limit: int = 100) -> list[RunRecord]:
        """Interrupt unfinished runs whose lease ran out (or that have none: a dead
        single-process gateway's), keeping their checkpointed text and adding it as the
        session's interrupted reply, and bump their fencing token; the runs as finished.
        Concurrent callers never take the same run."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or None; a live run's content is everything checkpointed so far."""
        ...

    async def find_run_by_request(
        self, *, session_id: str, client_request_id: str
    ) -> RunRecord | None:
        """The run a client already started with this request id on this session, or None."""
        ...

    async def set_run_status(self, run_id: str, status: RunStatus) -> None:
        """Move a run along (pending -> streaming) without finishing it."""
        ...

    async def checkpoint_run(self, run_id: str, *, content: str, events: list[Any]) -> None:
        """Append what a live run streamed since its previous checkpoint."""
        ...

    async def checkpoint_runs(self, checkpoints: Sequence[Checkpoint]) -> set[str]:
        """Append many live runs' new text in one transaction (marking them `streaming`);
        final runs are never touched. Returns the runs whose fenced checkpoint was refused
        (final, or fenced by a newer token): they wrote nothing."""
        ...

    async def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        content: StoredText,
        error: str | None,
        usage: JsonObject | None,
        events: list[Any],
        messages: list[NewMessage],
        fence: int | None = None,
        ended_at: datetime | None = None,
    ) -> None:
        """Save a run's final state (its whole reply and replay index) and its new messages
        (tool turns, the reply) atomically. With a `fence`, only an unfinished run carrying
        that token is saved; otherwise `LeaseLost` is raised and nothing changes. `ended_at`
        (default: now) is when the run ended, as its live log says."""
        ...

    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs still `pending` or `streaming` (after a crash: runs nobody is running)."""
        ...

    async def run_ids_of_session(self, session_id: str) -> list[str]:
        """Every run of a session (to forget them everywhere when it is deleted)."""
        ...

    async def active_run_ids(self, session_ids: Sequence[str]) -> dict[str, str]:
        """The unfinished run of each of these sessions that has one, whoever owns it."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """The session, or None."""
        ...

    async def list_sessions(
        self, *, principal: str, limit: int, offset: int
    ) -> tuple[list[SessionRecord], int]:
        """One page of a principal's sessions, most recently updated first, and the total."""
        ...

    async def rename_session(
        self, session_id: str, *, principal: str, title: str
    ) -> SessionRecord | None:
        """Give a principal's session a new title; None (nothing changed) if it has no such
        session. Renaming is not activity: the session keeps its place in the list."""
        ...

    async def search_sessions(
        self, *, principal: str, query: str, limit: int, offset: int
    ) -> tuple[list[SessionHit], int]:
        """One page of a principal's sessions holding every word of `query` (each as a
        prefix) somewhere in their title or user and assistant messages, best match first,
        and how many match. Any text is a valid query: only its words count (none: nothing
        is found)."""
        ...

    async def list_messages(self, session_id: str) -> list[MessageRecord]:
        """A session's messages in order."""
        ...

    async def delete_run(self, run_id: str) -> bool:
        """Delete a finished run and its messages, and its session if no other run is left;
        False if there was no such run."""
        ...

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session with its messages and runs; False if it did not exist."""
        ...
