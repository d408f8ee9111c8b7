"""The broker: what several gateway instances share about their runs, behind one protocol.

An instance that owns a run (runs its model stream) `publish`es the run's stream log; any
instance `follow`s a run it does not own, reading a `StreamLog` with the same `seq` numbers;
`end_run` lets another instance end a dead owner's run; `request_cancel`/`on_cancel` carry
cancel requests to the owner. `create_broker` picks the implementation by URL:

- no URL (or `memory://`): `MemoryBroker`, one process, nothing shared (the default; it
  never imports redis);
- `redis://`, `rediss://`, `unix://`: `RedisBroker` (Redis streams; imported lazily).

The broker's tasks belong to it: `open` starts them and `close` stops them. Whoever builds
the broker (the app's lifespan) opens it before the first run and closes it after the last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.core.stream_log import StreamLog

REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_RETENTION_SECONDS = 900.0
DEFAULT_MAX_ENTRIES = 10_000


class UnknownBrokerUrl(ValueError):
    """The broker URL names a scheme no broker implements."""


class Broker(Protocol):
    """What an instance shares with the other instances of its deployment."""

    async def open(self) -> None:
        """Connect and start the broker's tasks (does not fail if the service is down)."""
        ...

    async def close(self) -> None:
        """Stop the broker's tasks (no more retries) and disconnect."""
        ...

    async def ping(self) -> None:
        """Check the service answers now; raises `BrokerUnavailable` if it does not."""
        ...

    @property
    def healthy(self) -> bool:
        """False while the service is unreachable; True again by itself when it returns."""
        ...

    async def wait_health(self, healthy: bool) -> None:
        """Return once `healthy` is `healthy` (new runs can wait for the service to return)."""
        ...

    def publish(self, log: LocalLog, *, owner: str) -> None:
        """Share `log` from now on (what it holds, then each new event) until its end event
        is stored; then it expires after the retention. Never blocks the caller."""
        ...

    async def drain(self) -> None:
        """Return once everything published so far is stored (waits while the service is
        away: bound it with a timeout)."""
        ...

    async def follow(self, run_id: str) -> StreamLog | None:
        """A log of another instance's run, replaying what is stored then following live;
        None if the run is not shared. Readers of one run on one instance share one log."""
        ...

    async def end_run(self, run_id: str, *, status: RunStatus, error: str | None) -> bool:
        """End a dead owner's run: append an `error` event (if `error`) and the `end` event
        after what is stored, unless it already ended; True if it appended. The old owner
        can append nothing afterwards."""
        ...

    async def request_cancel(self, run_id: str) -> None:
        """Ask the run's owner, whichever instance it is, to cancel the run."""
        ...

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call `callback(run_id)` for each cancel request (the owner acts, others ignore)."""
        ...

    async def forget(self, run_ids: Sequence[str]) -> None:
        """The runs of a deleted session: drop what the service holds of them and tell every
        instance to drop what it holds (its `on_forget` callbacks)."""
        ...

    def on_forget(self, callback: Callable[[str], None]) -> None:
        """Call `callback(run_id)` for each run any instance forgets."""
        ...


def create_broker(
    redis_url: str | None,
    *,
    prefix: str,
    instance_id: str | None = None,
    retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> Broker:
    """The broker for a URL: in memory without one, Redis for a Redis URL. Raises
    `UnknownBrokerUrl` for any other scheme."""
    if redis_url is None or redis_url in ("", "memory://"):
        from martlet_molt.broker.memory import MemoryBroker

        return MemoryBroker()
    scheme = redis_url.partition("://")[0].lower()
    if scheme not in REDIS_SCHEMES:
        raise UnknownBrokerUrl(f"no broker for {scheme!r} URLs; use redis:// or none")
    from martlet_molt.broker.redis import RedisBroker

    return RedisBroker(
        redis_url,
        prefix=prefix,
        instance_id=instance_id,
        retention_seconds=retention_seconds,
        max_entries=max_entries,
    )
