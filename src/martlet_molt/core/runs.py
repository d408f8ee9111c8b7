"""The run manager: the only owner of background runs.

Who does what:
- `RunManager.start` (called by a request) saves the user message and a pending run, creates the
  run's stream log, and starts the run's task. The request then only *reads* the log.
- The task (`_drive`) streams the model into the log, saves the outcome, and only then appends
  the log's end event. Its reference is kept in `_tasks` until it ends; its errors are logged.
- Only the manager cancels a task: on `cancel`, on session deletion and at shutdown. A reader
  going away cancels nothing but that reader.
- Finished logs stay in memory for the retention period (within count and size caps) so late
  readers replay from memory; after that a resume is answered from the store.

With several instances (a `RedisBroker`), the broker mirrors every log this instance owns so that
any instance can read it; a run started elsewhere is read through `broker.follow`, and cancelled
through the broker and the database (`request_cancel`), since only its owner holds its task.
Each owned run carries a fencing token: its checkpoints and its final save are refused once
another instance took it over (`core/leases.py`), and a refused run stops without saving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from loguru import logger

from martlet_molt.broker.base import Broker
from martlet_molt.broker.memory import MemoryBroker
from martlet_molt.config import Settings
from martlet_molt.core.agent import Agent
from martlet_molt.core.leases import LeaseKeeper
from martlet_molt.core.memory import TRIM_AFTER_EVICTED, release_memory
from martlet_molt.core.session import new_session_id, to_chat_messages
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_buffer import StreamBuffer, StreamBufferManager, new_run_id
from martlet_molt.core.stream_log import StreamLog
from martlet_molt.core.tools import ToolRegistry
from martlet_molt.errors import (
    BrokerUnavailable,
    LeaseLost,
    LogTrimmed,
    MartletError,
    ProviderError,
    ProviderNotConfigured,
    RunNotFound,
    ServiceUnavailable,
    SessionBusy,
    SessionNotFound,
    StoreUnavailable,
)
from martlet_molt.metrics import Metrics, classify_upstream_error
from martlet_molt.providers.base import ChatMessage, Provider
from martlet_molt.store.base import Checkpoint, Lease, RunRecord, Store
from martlet_molt.store.reachability import is_unreachable

PROVIDER_HINT = (
    "no model provider is configured: set OPENAI_API_KEY (and optionally OPENAI_BASE_URL) "
    "or OPENAI_BASE_URL for a local OpenAI-compatible server, then restart; or unset "
    "MARTLET_PROVIDER to answer with the built-in local model"
)

TAKEN_OVER_ERROR = "interrupted: another instance took the run over"
"""Why an owner that lost its lease ends its own copy of the log."""

_SAVE_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)

REMOTE_CATCH_UP_SECONDS = 1.0
"""How long a resume on another instance waits for the owner's mirror to reach its cursor."""

MIRROR_POLL_SECONDS = 0.01
"""How often a reader of a run started elsewhere a moment ago looks for its mirror."""

CANCEL_POLL_SECONDS = 0.1
"""How often a cancel of a run owned elsewhere checks the store, when its log cannot be read."""


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as clients see it, whether it is live in memory or only in the store."""

    run_id: str
    session_id: str
    status: RunStatus
    content: str
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    usage: dict[str, Any] | None

    @classmethod
    def of_log(cls, log: StreamBuffer) -> RunView:
        """The view of a live (or recently finished) run."""
        return cls(
            log.run_id,
            log.session_id,
            log.status,
            log.full_content,
            log.error,
            log.created_at,
            # A saved run's row was last updated when it ended, which is what it reads as.
            log.completed_at if log.closed and log.completed_at else log.updated_at,
            log.completed_at,
            log.usage,
        )

    @classmethod
    def of_record(cls, record: RunRecord) -> RunView:
        """The view of a run known only to the store."""
        return cls(
            record.run_id,
            record.session_id,
            record.status,
            record.content,
            record.error,
            record.created_at,
            record.updated_at,
            record.completed_at,
            record.usage,
        )


class RunManager:
    """Starts, tracks, cancels and finishes runs; holds their stream logs."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        provider: Provider | None,
        tools: ToolRegistry,
        metrics: Metrics | None = None,
        broker: Broker | None = None,
        owner: str = "",
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.tools = tools
        self.metrics = metrics if metrics is not None else Metrics()
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.owner = owner
        # Several instances share runs only through a broker that reaches them all.
        self.shared = not isinstance(self.broker, MemoryBroker)
        self.logs = StreamBufferManager(
            settings.max_active_runs,
            retention_seconds=settings.run_retention_seconds,
            max_finished=settings.max_held_runs,
            max_finished_chars=settings.max_held_chars,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._active_by_session: dict[str, str] = {}
        self._cancelling: set[str] = set()
        self._accepting = True
        self._shutting_down = False
        self._by_request: dict[tuple[str, str, str], str] = {}
        self._request_of_run: dict[str, tuple[str, str, str]] = {}
        self._checkpointed: dict[str, int] = {}
        self._chores: list[asyncio.Task[None]] = []
        self._beginning: set[asyncio.Task[None]] = set()
        self._fences: dict[str, int] = {}
        self._lost: set[str] = set()
        self.leases: LeaseKeeper | None = None
        if self.shared:
            self.leases = LeaseKeeper(
                store=store,
                broker=self.broker,
                owner=owner,
                lease_seconds=settings.run_lease_seconds,
                held=self._held_leases,
                on_lost=self._lose,
                on_cancel=self._cancel_here,
            )
            self.broker.on_cancel(self._cancel_here)
            self.broker.on_forget(self._forget_here)
        self.metrics.watch_active_runs(lambda: len(self._tasks))

    # -- life cycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Start the periodic chores: checkpoints of live runs, eviction of finished logs, and
        with several instances the leases."""
        self._chores = [
            asyncio.create_task(self._checkpoint_periodically(), name="checkpoints"),
            asyncio.create_task(self._evict_periodically(), name="log eviction"),
        ]
        if self.leases is not None:
            self.leases.open()

    def _held_leases(self) -> list[Lease]:
        return [
            Lease(run_id, fence)
            for run_id, fence in self._fences.items()
            if run_id in self._tasks and run_id not in self._lost
        ]

    def _lose(self, run_id: str) -> None:
        """Another instance took this run over: stop it at once (closing the upstream
        request) and save nothing, since the outcome is already decided."""
        if run_id in self._tasks and run_id not in self._lost:
            self._lost.add(run_id)
            self._cancel_task(run_id)

    def _forget_here(self, run_id: str) -> None:
        """Another instance deleted this run's session: drop its held log."""
        if run_id not in self._tasks:
            self.logs.remove(run_id)

    def _cancel_here(self, run_id: str) -> None:
        """A cancel asked on another instance, for a run this instance may own."""
        if self._cancel_task(run_id) is not None:
            logger.info("run {} cancel requested on another instance", run_id)

    async def _evict_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.eviction_interval_seconds)
            evicted = self.logs.evict()
            if evicted:
                logger.debug("evicted {} finished stream logs", evicted)
            if evicted >= TRIM_AFTER_EVICTED:
                release_memory()

    async def _checkpoint_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_seconds)
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Append what every live run streamed since its last checkpoint, in one batch (never
        a write per token, never the whole reply again)."""
        batch: list[Checkpoint] = []
        seqs: dict[str, int] = {}
        for run_id in list(self._tasks):
            log = self.logs.get(run_id)
            if log is None or log.status is not RunStatus.STREAMING:
                continue
            saved = self._checkpointed.get(run_id, 0)
            if saved == log.last_seq:
                continue
            batch.append(
                Checkpoint(
                    run_id,
                    log.content_after(saved),
                    log.replay_index(saved),
                    fence=self._fences.get(run_id),
                )
            )
            seqs[run_id] = log.last_seq
        if not batch:
            return
        try:
            refused = await self.store.checkpoint_runs(batch)
        except Exception as exc:
            logger.opt(exception=exc).error("checkpoint of {} runs failed", len(batch))
            return
        for run_id in refused:
            self._lose(run_id)
        for run_id, seq in seqs.items():
            if run_id in self._tasks and run_id not in refused:
                self._checkpointed[run_id] = seq

    async def close(self, grace_seconds: float | None = None) -> None:
        """Stop taking runs, let running ones finish within the grace period, interrupt the
        rest (their partial replies are saved), and stop eviction."""
        self._accepting = False
        if self._beginning:  # runs being saved right now start (or fail) before the drain
            await asyncio.wait(set(self._beginning))
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        running = list(self._tasks.values())
        if running:
            logger.info("waiting up to {}s for {} running runs", grace, len(running))
            _, still_running = await asyncio.wait(running, timeout=grace)
            if still_running:
                self._shutting_down = True
                for run_id in list(self._tasks):
                    self._cancel_task(run_id)
                await asyncio.wait(still_running)
        for chore in self._chores:
            chore.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chore
        self._chores = []
        if self.leases is not None:
            await self.leases.close()

    # -- starting ------------------------------------------------------------------------

    async def start(
        self,
        *,
        message: str,
        principal: str,
        session_id: str | None = None,
        client_request_id: str | None = None,
    ) -> StreamLog:
        """Save the user's message and start a background run answering it."""
        if not self._accepting:
            raise ServiceUnavailable("the gateway is shutting down; try again shortly")
        if self.provider is None:
            raise ProviderNotConfigured(PROVIDER_HINT)
        if not self.broker.healthy:
            raise BrokerUnavailable(
                "the shared stream log (Redis) cannot be reached; try again shortly"
            )
        request_key = None
        if client_request_id is not None:
            request_key = (principal, session_id or "", client_request_id)
            existing = await self._find_started(request_key)
            if existing is not None:
                return existing
        new_session = session_id is None
        session_id = session_id or new_session_id()
        active = self._active_by_session.get(session_id)
        if active is not None:
            busy = self.logs.get(active)
            if busy is not None and busy.principal != principal:
                # Another principal's session must look absent: a 409 would name its run.
                raise SessionNotFound(f"session {session_id} not found")
            raise SessionBusy(session_id, active)
        run_id = new_run_id()
        log = self.logs.create(session_id, self.settings.max_reply_chars, run_id=run_id)
        log.principal = principal
        self._active_by_session[session_id] = run_id
        if request_key is not None:
            self._by_request[request_key] = run_id
            self._request_of_run[run_id] = request_key
        # A new session's context is known without asking the store: one round trip less
        # before the first token.
        first_turn: list[ChatMessage] | None = (
            [{"role": "user", "content": message}] if new_session else None
        )
        # Shielded: once the question is on its way to the store, the run starts if it is
        # saved, even if the request that asked goes away meanwhile.
        beginning = asyncio.create_task(
            self._begin(log, self.provider, message, client_request_id, first_turn)
        )
        self._beginning.add(beginning)
        beginning.add_done_callback(self._beginning.discard)
        await asyncio.shield(beginning)
        return log

    async def _begin(
        self,
        log: StreamBuffer,
        provider: Provider,
        message: str,
        client_request_id: str | None,
        first_turn: list[ChatMessage] | None,
    ) -> None:
        """Save the question and a pending run, then start the run's task."""
        run_id, session_id = log.run_id, log.session_id
        try:
            record = await self.store.start_run(
                session_id=session_id,
                principal=log.principal,
                run_id=run_id,
                user_message=message,
                client_request_id=client_request_id,
                owner=self.owner if self.shared else None,
                lease_seconds=self.settings.run_lease_seconds if self.shared else None,
            )
        except BaseException as exc:
            self._active_by_session.pop(session_id, None)
            request_key = self._request_of_run.pop(run_id, None)
            if request_key is not None:
                self._by_request.pop(request_key, None)
            self.logs.remove(run_id)
            if isinstance(exc, Exception) and is_unreachable(exc):
                logger.warning("run {} could not be saved to start: {!r}", run_id, exc)
                raise StoreUnavailable("the store cannot be reached; try again shortly") from exc
            raise
        # The log and the store tell the same times, whichever of them a reader asks.
        log.created_at = log.updated_at = record.created_at
        if self.shared:
            self._fences[run_id] = record.fence
            self.broker.publish(log, owner=self.owner)
        agent = Agent(provider, self.tools, max_rounds=self.settings.max_tool_rounds)
        task = asyncio.create_task(self._drive(log, agent, first_turn), name=f"run {run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(partial(self._collect, run_id))
        self.metrics.run_started()
        logger.info("run {} started in session {} (model {})", run_id, session_id, provider.model)

    async def _find_started(self, request_key: tuple[str, str, str]) -> StreamLog | None:
        """The run a retried request already started (in memory, else in the store)."""
        principal, session_id, client_request_id = request_key
        run_id = self._by_request.get(request_key)
        if run_id is None and session_id:
            record = await self.store.find_run_by_request(
                session_id=session_id, client_request_id=client_request_id
            )
            if record is not None and record.principal == principal:
                run_id = record.run_id
            else:
                run_id = self._by_request.get(request_key)
        if run_id is None:
            return None
        logger.info("request {} attaches to its run {}", client_request_id, run_id)
        return await self.get_log(run_id, principal)

    def _collect(self, run_id: str, task: asyncio.Task[None]) -> None:
        """Drop a finished task and surface anything it raised that `_drive` did not handle."""
        self._tasks.pop(run_id, None)
        self._cancelling.discard(run_id)
        self._checkpointed.pop(run_id, None)
        self._fences.pop(run_id, None)
        self._lost.discard(run_id)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("run task {} crashed", task.get_name())

    # -- the run itself ------------------------------------------------------------------

    async def _drive(
        self, log: StreamBuffer, agent: Agent, first_turn: list[ChatMessage] | None
    ) -> None:
        """Stream, then save, then end the log: in that order, whatever happens."""
        with logger.contextualize(session_id=log.session_id):
            await self._stream_then_save(log, agent, first_turn)

    async def _context(
        self, log: StreamBuffer, first_turn: list[ChatMessage] | None
    ) -> list[ChatMessage]:
        """What the model is sent: the system prompt and the session's saved turns."""
        if first_turn is not None:
            return to_chat_messages([], self.settings.system_prompt) + first_turn
        records = await self.store.list_messages(log.session_id)
        return to_chat_messages(records, self.settings.system_prompt)

    async def _stream_then_save(
        self, log: StreamBuffer, agent: Agent, first_turn: list[ChatMessage] | None
    ) -> None:
        started = time.monotonic()
        status, error = RunStatus.COMPLETED, None
        try:
            history = await self._context(log, first_turn)
            # The store learns `streaming` with the first checkpoint; nothing waits on it.
            log.start()
            await agent.stream_to_buffer(history, log)
        except asyncio.CancelledError:
            status = RunStatus.INTERRUPTED if self._shutting_down else RunStatus.CANCELLED
            error = "interrupted" if self._shutting_down else None
            if log.run_id in self._lost:
                status, error = RunStatus.INTERRUPTED, TAKEN_OVER_ERROR
            logger.info("run {} {}", log.run_id, status.value)
        except MartletError as exc:
            status, error = RunStatus.FAILED, exc.message
            logger.warning("run {} failed: {}", log.run_id, exc.message)
            if isinstance(exc, ProviderError):
                self.metrics.upstream_error(classify_upstream_error(exc))
        except Exception as exc:
            status, error = RunStatus.FAILED, f"{type(exc).__name__}: {exc}"
            logger.opt(exception=exc).error("run {} failed", log.run_id)
        # From here on the run is saving: a cancel now must wait for the save, not cut it.
        self._cancelling.add(log.run_id)
        ended = datetime.now(UTC)
        if agent.usage:
            log.set_usage(agent.usage)
        if log.run_id in self._lost:
            # Another instance saved the outcome already; this copy only tells its readers.
            status, error = RunStatus.INTERRUPTED, TAKEN_OVER_ERROR
        else:
            status, error = await self._save(log, agent, status, error, ended)
            self._fences.pop(log.run_id, None)  # saved: its lease is no longer renewed
        self._end(log, status, error)
        log.completed_at = ended
        if log.run_id in self._lost:
            # What this copy streamed after the takeover was never saved: from now on the run
            # is read as the instance that took it over saved it.
            self.logs.remove(log.run_id)
        self._count_end(log, status)
        first = log.first_token_at
        logger.info(
            "run {} ended {} ({} chars, first token after {}, {:.2f}s)",
            log.run_id,
            status.value,
            log.content_length,
            "-" if first is None else f"{(first - log.created_at).total_seconds():.3f}s",
            time.monotonic() - started,
        )

    async def _save(
        self,
        log: StreamBuffer,
        agent: Agent,
        status: RunStatus,
        error: str | None,
        ended: datetime,
    ) -> tuple[RunStatus, str | None]:
        """Save the run's outcome, retrying for a while if the database cannot be reached (the
        text is held in the log meanwhile); returns the status readers are told."""
        deadline = time.monotonic() + self.settings.save_retry_seconds
        for attempt in itertools.count():
            try:
                await self.store.finish_run(
                    log.run_id,
                    status=status,
                    content=log.text_from(),
                    error=error,
                    usage=log.usage,
                    events=log.replay_index(),
                    messages=agent.messages_to_save(log, status),
                    fence=self._fences.get(log.run_id),
                    ended_at=ended,
                )
                return status, error
            except LeaseLost:
                logger.warning("run {} was taken over before its save", log.run_id)
                self._lost.add(log.run_id)
                return RunStatus.INTERRUPTED, TAKEN_OVER_ERROR
            except MartletError as exc:
                logger.opt(exception=exc).error("run {} could not be saved", log.run_id)
                return RunStatus.FAILED, f"the reply could not be saved: {exc.message}"
            except Exception as exc:
                delay = _SAVE_RETRY_DELAYS[min(attempt, len(_SAVE_RETRY_DELAYS) - 1)]
                if not is_unreachable(exc) or time.monotonic() + delay > deadline:
                    logger.opt(exception=exc).error("run {} could not be saved", log.run_id)
                    return RunStatus.FAILED, f"the reply could not be saved: {exc}"
                logger.warning("saving run {} failed, retrying: {!r}", log.run_id, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _count_end(self, log: StreamBuffer, status: RunStatus) -> None:
        """Metrics of an ended run, once (never per chunk): both times from its creation."""
        ended = log.completed_at or log.updated_at
        first = log.first_token_at
        self.metrics.run_ended(
            status.value,
            chars=log.content_length,
            duration=(ended - log.created_at).total_seconds(),
            ttft=(first - log.created_at).total_seconds() if first is not None else None,
            usage=log.usage,
        )

    def _end(self, log: StreamBuffer, status: RunStatus, error: str | None) -> None:
        """Free the session for its next run, then tell the readers (no await between)."""
        if self._active_by_session.get(log.session_id) == log.run_id:
            del self._active_by_session[log.session_id]
        request_key = self._request_of_run.pop(log.run_id, None)
        if request_key is not None:
            self._by_request.pop(request_key, None)
        if status is RunStatus.COMPLETED:
            log.complete()
        elif status is RunStatus.CANCELLED:
            log.cancel()
        elif status is RunStatus.INTERRUPTED:
            log.interrupt(error or "interrupted")
        else:
            log.fail(error or "failed")

    # -- reading and steering ------------------------------------------------------------

    async def active_run_ids(self, session_ids: Sequence[str]) -> dict[str, str]:
        """The running run of each session that has one (on any instance)."""
        if self.shared:
            return await self.store.active_run_ids(session_ids)
        active = self._active_by_session
        return {s: active[s] for s in session_ids if s in active}

    async def _follow_elsewhere(
        self, run_id: str, principal: str, after: int = 0
    ) -> StreamLog | None:
        """A run's log mirrored by the instance that owns it, if the broker still holds it
        from `after` on."""
        if not self.shared:
            return None
        remote = await self.broker.follow(run_id)
        if remote is None:
            return None
        if remote.principal != principal:
            raise RunNotFound(f"run {run_id} not found")
        try:
            remote.events_after(after, limit=1)
        except LogTrimmed:
            return None
        if after > remote.last_seq and not remote.closed:
            # A reader that read the owner directly may be a flush ahead of the mirror.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REMOTE_CATCH_UP_SECONDS):
                    while remote.last_seq < after and not remote.closed:
                        await remote.wait(remote.last_seq)
        return remote

    async def get_log(self, run_id: str, principal: str, after: int = 0) -> StreamLog:
        """The run's log, to be read from `after`: live from memory (this instance's, or the
        owner's through the broker), or rebuilt from the store after eviction."""
        log = self.logs.get(run_id)
        if log is not None:
            if log.principal != principal:
                raise RunNotFound(f"run {run_id} not found")
            return log
        remote = await self._follow_elsewhere(run_id, principal, after)
        if remote is not None:
            return remote
        record = await self._get_record(run_id, principal)
        if self.shared and not record.status.is_final:
            # Started a moment ago: its owner's first flush has not reached Redis yet.
            remote = await self._await_mirror(run_id, principal, after)
            if remote is not None:
                return remote
            raise BrokerUnavailable(
                f"run {run_id} is live on another instance whose stream log cannot be read now"
            )
        status = record.status if record.status.is_final else RunStatus.INTERRUPTED
        return StreamBuffer.from_saved(
            run_id=record.run_id,
            session_id=record.session_id,
            principal=record.principal,
            status=status,
            content=record.content,
            error=record.error if record.status.is_final else "interrupted",
            usage=record.usage,
            index=record.events,
        )

    async def _get_record(self, run_id: str, principal: str) -> RunRecord:
        record = await self.store.get_run(run_id)
        if record is None or record.principal != principal:
            raise RunNotFound(f"run {run_id} not found")
        return record

    async def get_run(self, run_id: str, principal: str) -> RunView:
        """The run's current state."""
        log = self.logs.get(run_id)
        if log is not None and log.principal == principal:
            return RunView.of_log(log)
        view = RunView.of_record(await self._get_record(run_id, principal))
        if self.shared and not view.status.is_final:
            # Live on another instance: its mirror is fresher than the last checkpoint.
            with contextlib.suppress(MartletError):
                remote = await self._follow_elsewhere(run_id, principal)
                if remote is not None and remote.status.is_final:
                    view = RunView.of_record(await self._get_record(run_id, principal))
                elif remote is not None and len(remote.full_content) >= len(view.content):
                    view = replace(view, content=remote.full_content, status=remote.status)
        return view

    async def _await_mirror(self, run_id: str, principal: str, after: int) -> StreamLog | None:
        """The mirror of a run that has just started elsewhere, once it appears (bounded)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REMOTE_CATCH_UP_SECONDS):
                while True:
                    await asyncio.sleep(MIRROR_POLL_SECONDS)
                    remote = await self._follow_elsewhere(run_id, principal, after)
                    if remote is not None:
                        return remote
        return None

    async def _until_final(self, run_id: str, principal: str) -> None:
        """Wait (bounded by a lease and a grace period) for another instance's run to end."""
        deadline = self.settings.run_lease_seconds + self.settings.shutdown_grace_seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline):
                remote = await self._follow_elsewhere(run_id, principal)
                if remote is not None:
                    while not remote.closed:
                        await remote.wait(remote.last_seq)
                    return
                while True:
                    if (await self._get_record(run_id, principal)).status.is_final:
                        return
                    await asyncio.sleep(CANCEL_POLL_SECONDS)

    def _cancel_task(self, run_id: str) -> asyncio.Task[None] | None:
        task = self._tasks.get(run_id)
        if task is None or task.done():
            return None
        if run_id not in self._cancelling:
            self._cancelling.add(run_id)
            task.cancel()
        return task

    async def cancel(self, run_id: str, principal: str) -> RunView:
        """Cancel a run and wait until its partial reply is saved; a no-op on finished runs."""
        view = await self.get_run(run_id, principal)
        task = self._cancel_task(view.run_id)
        if task is not None:
            logger.info("run {} cancel requested", run_id)
            await asyncio.wait({task})
        elif self.shared and not view.status.is_final:
            # Owned elsewhere: the owner hears it through the broker at once, or through the
            # database at its next lease renewal if the message is lost.
            logger.info("run {} cancel requested from its owner", run_id)
            await self.store.request_cancel(run_id)
            with contextlib.suppress(Exception):
                await self.broker.request_cancel(run_id)
            await self._until_final(run_id, principal)
        return await self.get_run(run_id, principal)

    async def delete_session(self, session_id: str, principal: str) -> None:
        """Cancel the session's active run, then delete the session and forget its logs."""
        session = await self.store.get_session(session_id)
        if session is None or session.principal != principal:
            raise SessionNotFound(f"session {session_id} not found")
        active = (await self.active_run_ids([session_id])).get(session_id)
        if active is not None:
            await self.cancel(active, principal)
        run_ids = await self.store.run_ids_of_session(session_id) if self.shared else []
        await self.store.delete_session(session_id)
        with contextlib.suppress(BrokerUnavailable):  # if so, the keys expire by themselves
            await self.broker.forget(run_ids)
        for run_id in self.logs.run_ids_of_session(session_id):
            self.logs.remove(run_id)
        logger.info("session {} deleted", session_id)

    @property
    def running_count(self) -> int:
        """How many runs are in progress."""
        return len(self._tasks)
