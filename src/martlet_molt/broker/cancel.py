"""Cancel requests across instances: one Redis pub/sub channel per deployment.

The same channel carries `forget:<run_id>` when a session is deleted, so that every instance
drops what it still holds of the session's runs.

Any instance may be asked to cancel a run; only the run's owner can (its run manager is the
only thing that cancels a run's task). `request` publishes the run id on the deployment's
cancel channel; every instance's `CancelChannel` hears it and calls its callbacks, and the
owner's run manager acts on it (the others ignore a run they do not own).

One subscription per instance: a dedicated connection and one listening task, started by
`start` and cancelled by `close` (the broker's open and close). When the connection drops the
task reports it, backs off and listens again; redis-py subscribes the channel again on the
new connection. A request published while an instance is cut off is lost for that instance:
the caller's cancel is answered by the owner's run manager, which persists the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, cast

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from martlet_molt.broker.health import Backoff, Health, stop

CancelCallback = Callable[[str], None]

FORGET = "forget:"
"""Marks a message about a deleted run (run ids never contain a colon)."""


class CancelChannel:
    """Publishes and hears the deployment's cancel requests."""

    def __init__(self, listener: Redis, *, commands: Redis, channel: str, health: Health) -> None:
        self._listener = listener
        self._commands = commands
        self._channel = channel
        self._health = health
        self._callbacks: list[CancelCallback] = []
        self._forget_callbacks: list[CancelCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = False

    def on_cancel(self, callback: CancelCallback) -> None:
        """Call `callback(run_id)` for every cancel request any instance makes."""
        self._callbacks.append(callback)

    def on_forget(self, callback: CancelCallback) -> None:
        """Call `callback(run_id)` for every run any instance forgets."""
        self._forget_callbacks.append(callback)

    async def request(self, run_id: str) -> None:
        """Ask every instance (the run's owner among them) to cancel `run_id`."""
        await self._commands.publish(self._channel, run_id)  # pyright: ignore[reportUnknownMemberType]

    async def forget(self, run_id: str) -> None:
        """Tell every instance that `run_id` is deleted."""
        await self._commands.publish(self._channel, FORGET + run_id)  # pyright: ignore[reportUnknownMemberType]

    async def subscribed(self) -> None:
        """Return once the channel is subscribed (requests from now on are heard)."""
        await self._subscribed.wait()

    def start(self) -> None:
        """Start listening."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="broker-cancel-listener")

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self._closing = True
        await stop(self._task)
        self._task = None
        await self._listener.aclose()
        await self._listener.connection_pool.disconnect()

    async def _run(self) -> None:
        backoff = Backoff()
        pubsub = self._listener.pubsub()  # pyright: ignore[reportUnknownMemberType]
        try:
            while not self._closing:
                try:
                    if not pubsub.subscribed:
                        await pubsub.subscribe(self._channel)
                    message = cast(
                        "dict[str, Any] | None",
                        await pubsub.get_message(ignore_subscribe_messages=False, timeout=None),
                    )
                except RedisError as error:
                    self._subscribed.clear()
                    self._health.lost(error)
                    await backoff.wait()
                    continue
                backoff.reset()
                self._health.back()
                if message is not None:
                    self._handle(message)
        finally:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            self._subscribed.set()
        elif message["type"] == "message":
            run_id = bytes(message["data"]).decode()
            callbacks = self._callbacks
            if run_id.startswith(FORGET):
                run_id, callbacks = run_id.removeprefix(FORGET), self._forget_callbacks
            for callback in callbacks:
                try:
                    callback(run_id)
                except Exception:  # one failing callback must not stop the listener
                    logger.exception("control callback failed for run {}", run_id)
