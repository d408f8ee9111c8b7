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
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial

from loguru import logger

from martlet_molt.broker.base import Broker
from martlet_molt.broker.memory import MemoryBroker
from martlet_molt.config import Settings
from martlet_molt.core.agent import Agent
from martlet_molt.core.elsewhere import Elsewhere
from martlet_molt.core.leases import LeaseKeeper
from martlet_molt.core.local_log import LocalLog, new_run_id
from martlet_molt.core.local_logs import LocalLogs
from martlet_molt.core.memory import TRIM_AFTER_EVICTED, release_idle_then_memory
from martlet_molt.core.run_spec import RunSpec
from martlet_molt.core.run_view import RunView
from martlet_molt.core.saving import TAKEN_OVER_ERROR, Outcome, save_outcome
from martlet_molt.core.session import new_session_id, to_chat_messages, to_new_message
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import StreamLog
from martlet_molt.core.tools import ToolRegistry
from martlet_molt.errors import (
    BrokerUnavailable,
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
        self.logs = LocalLogs(
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
        self.elsewhere: Elsewhere | None = None
        if self.shared:
            self.elsewhere = Elsewhere(broker=self.broker, store=store, record_of=self.get_record)
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
        self.tools.on_call = self.metrics.tool_called
        self.started_at = int(time.time())

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
            logger.warning("run {} was taken over by another instance", run_id)
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
                releases = [self.store.release_idle_connections]
                if self.provider is not None:
                    releases.append(self.provider.release_idle_connections)
                await release_idle_then_memory(*releases)

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

    async def start(self, spec: RunSpec) -> StreamLog:
        """Save the request's new messages and start a background run answering them."""
        if not self._accepting:
            raise ServiceUnavailable("the gateway is shutting down; try again shortly")
        if self.provider is None:
            raise ProviderNotConfigured(PROVIDER_HINT)
        if not self.broker.healthy:
            raise BrokerUnavailable(
                "the shared stream log (Redis) cannot be reached; try again shortly"
            )
        principal = spec.principal
        request_key = None
        if spec.client_request_id is not None:
            request_key = (principal, spec.session_id or "", spec.client_request_id)
            existing = await self._find_started(request_key)
            if existing is not None:
                return existing
        new_session = spec.session_id is None
        session_id = spec.session_id or new_session_id()
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
        # Shielded: once the question is on its way to the store, the run starts if it is
        # saved, even if the request that asked goes away meanwhile.
        beginning = asyncio.create_task(self._begin(log, self.provider, spec, new_session))
        self._beginning.add(beginning)
        beginning.add_done_callback(self._beginning.discard)
        await asyncio.shield(beginning)
        return log

    async def _begin(
        self, log: LocalLog, provider: Provider, spec: RunSpec, new_session: bool
    ) -> None:
        """Save the question and a pending run, then start the run's task."""
        run_id, session_id = log.run_id, log.session_id
        try:
            record = await self.store.start_run(
                session_id=session_id,
                principal=log.principal,
                run_id=run_id,
                inputs=[to_new_message(message, run_id) for message in spec.messages],
                client_request_id=spec.client_request_id,
                owner=self.owner if self.shared else None,
                lease_seconds=self.settings.run_lease_seconds if self.shared else None,
                request=spec.request,
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
        agent = Agent(
            provider, self.tools, max_rounds=self.settings.max_tool_rounds, options=spec.options
        )
        # A new session's context is known without asking the store: one round trip less
        # before the first token.
        first_turn = list(spec.messages) if new_session else None
        task = asyncio.create_task(
            self._drive(log, agent, spec.instructions, first_turn), name=f"run {run_id}"
        )
        self._tasks[run_id] = task
        task.add_done_callback(partial(self._collect, run_id))
        self.metrics.run_started()
        model = spec.options.model or provider.model
        logger.info("run {} started in session {} (model {})", run_id, session_id, model)

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
        self,
        log: LocalLog,
        agent: Agent,
        instructions: str | None,
        first_turn: list[ChatMessage] | None,
    ) -> None:
        """Stream, then save, then end the log: in that order, whatever happens."""
        with logger.contextualize(session_id=log.session_id):
            await self._stream_then_save(log, agent, instructions, first_turn)

    async def _context(
        self, log: LocalLog, instructions: str | None, first_turn: list[ChatMessage] | None
    ) -> list[ChatMessage]:
        """What the model is sent: the system prompt (or the request's own instructions) and
        the session's saved turns."""
        if first_turn is None:
            turns = to_chat_messages(await self.store.list_messages(log.session_id))
        else:
            turns = first_turn
        system = self.settings.system_prompt if instructions is None else instructions
        return [{"role": "system", "content": system}, *turns] if system else turns

    async def _stream_then_save(
        self,
        log: LocalLog,
        agent: Agent,
        instructions: str | None,
        first_turn: list[ChatMessage] | None,
    ) -> None:
        started = time.monotonic()
        status, error = RunStatus.COMPLETED, None
        try:
            history = await self._context(log, instructions, first_turn)
            # The store learns `streaming` with the first checkpoint; nothing waits on it.
            log.start()
            await agent.stream_into_log(history, log)
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
        log.set_finish_reason(agent.finish_reason)
        if log.run_id in self._lost:
            # Another instance saved the outcome already; this copy only tells its readers.
            status, error = RunStatus.INTERRUPTED, TAKEN_OVER_ERROR
        else:
            outcome = await save_outcome(
                self.store,
                log,
                agent,
                Outcome(status, error),
                fence=self._fences.get(log.run_id),
                ended=ended,
                retry_seconds=self.settings.save_retry_seconds,
            )
            self._fences.pop(log.run_id, None)  # saved: its lease is renewed no more
            status, error = outcome.status, outcome.error
            if outcome.taken_over:
                self._lost.add(log.run_id)
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

    def _count_end(self, log: LocalLog, status: RunStatus) -> None:
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

    def _end(self, log: LocalLog, status: RunStatus, error: str | None) -> None:
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

    async def get_log(self, run_id: str, principal: str, after: int = 0) -> StreamLog:
        """The run's log, to be read from `after`: live from memory (this instance's, or the
        owner's through the broker), or rebuilt from the store after eviction."""
        log = self.logs.get(run_id)
        if log is not None:
            if log.principal != principal:
                raise RunNotFound(f"run {run_id} not found")
            return log
        if self.elsewhere is not None:
            remote = await self.elsewhere.follow(run_id, principal, after)
            if remote is not None:
                return remote
        record = await self.get_record(run_id, principal)
        if self.elsewhere is not None and not record.status.is_final:
            # Started a moment ago: its owner's first flush has not reached Redis yet.
            remote = await self.elsewhere.follow_when_mirrored(run_id, principal, after)
            if remote is not None:
                return remote
            raise BrokerUnavailable(
                f"run {run_id} is live on another instance whose stream log cannot be read now"
            )
        status = record.status if record.status.is_final else RunStatus.INTERRUPTED
        return LocalLog.from_saved(
            run_id=record.run_id,
            session_id=record.session_id,
            principal=record.principal,
            status=status,
            content=record.content,
            error=record.error if record.status.is_final else "interrupted",
            usage=record.usage,
            index=record.events,
        )

    async def get_record(self, run_id: str, principal: str) -> RunRecord:
        """The run as saved (404 for another principal's)."""
        record = await self.store.get_run(run_id)
        if record is None or record.principal != principal:
            raise RunNotFound(f"run {run_id} not found")
        return record

    async def get_run(self, run_id: str, principal: str) -> RunView:
        """The run's current state."""
        log = self.logs.get(run_id)
        if log is not None and log.principal == principal:
            return RunView.of_log(log)
        view = RunView.of_record(await self.get_record(run_id, principal))
        if self.elsewhere is not None and not view.status.is_final:
            # Live on another instance: its mirror is fresher than the last checkpoint.
            with contextlib.suppress(MartletError):
                remote = await self.elsewhere.follow(run_id, principal)
                if remote is not None and remote.status.is_final:
                    view = RunView.of_record(await self.get_record(run_id, principal))
                elif remote is not None and len(remote.full_content) >= len(view.content):
                    view = replace(view, content=remote.full_content, status=remote.status)
        return view

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
        elif self.elsewhere is not None and not view.status.is_final:
            logger.info("run {} cancel requested from its owner", run_id)
            await self.elsewhere.cancel(
                run_id,
                principal,
                wait_seconds=self.settings.run_lease_seconds + self.settings.shutdown_grace_seconds,
            )
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

    async def delete_run(self, run_id: str, principal: str) -> None:
        """Cancel a run if it is still going, then delete it and its messages everywhere."""
        await self.cancel(run_id, principal)
        await self.store.delete_run(run_id)
        with contextlib.suppress(BrokerUnavailable):  # if so, the keys expire by themselves
            await self.broker.forget([run_id])
        self.logs.remove(run_id)
        logger.info("run {} deleted", run_id)

    @property
    def running_count(self) -> int:
        """How many runs are in progress."""
        return len(self._tasks)
