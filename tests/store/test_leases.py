"""Leases and fencing (several instances on one database), on SQLite and PostgreSQL alike: the
owner renews, an expired run is taken over once, and the old owner's late writes are refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from martlet_molt.core.status import RunStatus
from martlet_molt.errors import Conflict, LeaseLost, RunNotFound, SessionBusy
from martlet_molt.store.base import Checkpoint, Lease, NewMessage, RenewedLeases, RunRecord
from martlet_molt.store.sql import SqlStore
from tests.store.test_sql_store import finish, start

TINY_LEASE = 0.05
LONG_LEASE = 600.0
POLLS = 500  # of `take_over_expired`, 10 ms apart: 5 s for a lease of 50 ms to run out


async def take_over_when_expired(store: SqlStore) -> list[RunRecord]:
    """Poll until a lease runs out and the run is taken over (bounded)."""
    for _ in range(POLLS):
        taken = await store.take_over_expired()
        if taken:
            return taken
        await asyncio.sleep(0.01)
    raise AssertionError("no lease ran out")


@pytest.mark.asyncio
async def test_start_run_records_owner_fence_and_lease(store: SqlStore) -> None:
    before = datetime.now(UTC)
    leased = await start(store, owner="i1", lease_seconds=LONG_LEASE)
    assert (leased.owner, leased.fence, leased.cancel_requested) == ("i1", 1, False)
    assert leased.lease_expires_at is not None
    deadline = before + timedelta(seconds=LONG_LEASE)
    assert (
        deadline - timedelta(seconds=5) < leased.lease_expires_at < deadline + timedelta(seconds=5)
    )
    assert await store.get_run("r1") == leased

    unleased = await start(store, 2)
    assert (unleased.owner, unleased.fence, unleased.lease_expires_at) == (None, 1, None)
    assert await store.get_run("r2") == unleased


@pytest.mark.asyncio
async def test_renew_extends_only_the_leases_still_held(store: SqlStore) -> None:
    first = await start(store, 1, owner="i1", lease_seconds=LONG_LEASE)
    await start(store, 2, owner="i1", lease_seconds=LONG_LEASE)
    await start(store, 3, owner="i2", lease_seconds=LONG_LEASE)
    await start(store, 4, owner="i1", lease_seconds=LONG_LEASE)
    await finish(store, "r4")
    leases = [Lease("r1", 1), Lease("r2", 2), Lease("r3", 1), Lease("r4", 1), Lease("r9", 1)]

    renewed = await store.renew_leases(owner="i1", leases=leases, lease_seconds=2 * LONG_LEASE)

    assert renewed == RenewedLeases(held={"r1"}, cancel_requested=set())
    record = await store.get_run("r1")
    assert record is not None
    assert first.lease_expires_at is not None
    assert record.lease_expires_at is not None
    assert record.lease_expires_at > first.lease_expires_at + timedelta(seconds=LONG_LEASE / 2)
    assert (record.status, record.updated_at) == (first.status, first.updated_at)
    nothing = await store.renew_leases(owner="i1", leases=[], lease_seconds=LONG_LEASE)
    assert nothing == RenewedLeases()


@pytest.mark.asyncio
async def test_a_cancel_request_reaches_the_owner_when_it_renews(store: SqlStore) -> None:
    await start(store, 1, owner="i1", lease_seconds=LONG_LEASE)
    await start(store, 2, owner="i1", lease_seconds=LONG_LEASE)
    await start(store, 3)
    await finish(store, "r3")

    assert await store.request_cancel("r1") is True
    assert await store.request_cancel("r3") is False  # final
    assert await store.request_cancel("nope") is False

    leases = [Lease("r1", 1), Lease("r2", 1)]
    renewed = await store.renew_leases(owner="i1", leases=leases, lease_seconds=LONG_LEASE)
    assert renewed == RenewedLeases(held={"r1", "r2"}, cancel_requested={"r1"})
    record = await store.get_run("r1")
    assert record is not None
    assert (record.cancel_requested, record.status) == (True, RunStatus.PENDING)


@pytest.mark.asyncio
async def test_an_expired_run_is_taken_over_once_and_its_owner_fenced(store: SqlStore) -> None:
    await start(store, owner="i1", lease_seconds=TINY_LEASE)
    refused = await store.checkpoint_runs([Checkpoint("r1", "Hel", [{"kind": "x"}, 3], fence=1)])
    assert refused == set()
    await store.checkpoint_runs([Checkpoint("r1", "lo", [2], fence=1)])

    [taken] = await take_over_when_expired(store)

    assert (taken.run_id, taken.status, taken.error) == ("r1", RunStatus.INTERRUPTED, "interrupted")
    assert (taken.content, taken.events, taken.fence) == ("Hello", [{"kind": "x"}, 3, 2], 2)
    assert taken.completed_at is not None
    assert await store.get_run("r1") == taken
    messages = await store.list_messages("s1")
    assert [(m.role, m.content, m.status, m.run_id) for m in messages] == [
        ("user", "hello 1", RunStatus.COMPLETED, "r1"),
        ("assistant", "Hello", RunStatus.INTERRUPTED, "r1"),
    ]
    assert await store.take_over_expired() == []

    # The old owner comes back: everything it writes with its fence is refused.
    assert await store.checkpoint_runs([Checkpoint("r1", " world", [6], fence=1)]) == {"r1"}
    with pytest.raises(LeaseLost) as lost:
        await finish(store, "r1", content="Hello world", fence=1)
    assert lost.value.run_id == "r1"
    renewed = await store.renew_leases(
        owner="i1", leases=[Lease("r1", 1)], lease_seconds=LONG_LEASE
    )
    assert renewed.held == set()
    assert await store.get_run("r1") == taken
    assert await store.list_messages("s1") == messages
    # The session is free for its next run.
    await start(store, run_id="r2", owner="i2", lease_seconds=LONG_LEASE)


@pytest.mark.asyncio
async def test_a_held_lease_is_not_taken_over_and_a_run_without_one_is(store: SqlStore) -> None:
    await start(store, 1, owner="i1", lease_seconds=LONG_LEASE)
    await start(store, 2)  # a single-process gateway's run: no lease, nobody to wait for
    await store.checkpoint_run("r2", content="partial", events=[7])
    taken = await store.take_over_expired()
    assert [(r.run_id, r.content, r.fence) for r in taken] == [("r2", "partial", 2)]
    record = await store.get_run("r1")
    assert record is not None
    assert record.status is RunStatus.PENDING


@pytest.mark.asyncio
async def test_take_over_takes_at_most_its_limit_oldest_first(store: SqlStore) -> None:
    for n in range(1, 6):
        await start(store, n)
    assert [r.run_id for r in await store.take_over_expired(limit=2)] == ["r1", "r2"]
    assert [r.run_id for r in await store.take_over_expired(limit=10)] == ["r3", "r4", "r5"]


@pytest.mark.asyncio
async def test_two_instances_taking_over_at_once_never_take_a_run_twice(store_url: str) -> None:
    instances = [SqlStore(store_url), SqlStore(store_url)]
    for instance in instances:
        await instance.open()
    try:
        for n in range(40):  # left by a single-process gateway: no lease, all taken at once
            await start(instances[n % 2], n)
        rounds = await asyncio.gather(
            *(instance.take_over_expired(limit=5) for instance in instances * 4)
        )
        taken = [record.run_id for batch in rounds for record in batch]
        assert len(taken) == len(set(taken))
        left = [record.run_id for record in await instances[0].take_over_expired()]
        assert sorted(taken + left) == sorted(f"r{n}" for n in range(40))
        assert await instances[1].unfinished_runs() == []
        for n in range(40):
            replies = [m for m in await instances[0].list_messages(f"s{n}") if m.role != "user"]
            assert len(replies) == 1
    finally:
        for instance in instances:
            await instance.close()


@pytest.mark.asyncio
async def test_fenced_checkpoints_apply_only_with_the_current_fence(store: SqlStore) -> None:
    for n in range(1, 5):
        await start(store, n, owner="i1", lease_seconds=LONG_LEASE)
    await finish(store, "r3", content="final 3")
    await finish(store, "r4", content="final 4")
    refused = await store.checkpoint_runs(
        [
            Checkpoint("r1", "one", [3], fence=1),
            Checkpoint("r2", "two", [3], fence=5),  # a newer owner's token
            Checkpoint("r3", "three", [5], fence=1),  # final
            Checkpoint("r4", "four", [4]),  # final, unfenced: silently skipped
            Checkpoint("r9", "nine", [4]),  # missing, unfenced
        ]
    )
    assert refused == {"r2", "r3"}
    contents: list[str] = []
    for n in range(1, 5):
        record = await store.get_run(f"r{n}")
        assert record is not None
        contents.append(record.content)
    assert contents == ["one", "", "final 3", "final 4"]


@pytest.mark.asyncio
async def test_a_fenced_finish_saves_only_for_the_current_owner(store: SqlStore) -> None:
    await start(store, owner="i1", lease_seconds=LONG_LEASE)
    with pytest.raises(LeaseLost):
        await finish(store, "r1", fence=2)
    done = await finish(store, "r1", content="done", fence=1)
    assert (done.status, done.content, done.fence) == (RunStatus.COMPLETED, "done", 1)
    with pytest.raises(LeaseLost):  # already final
        await finish(store, "r1", content="again", fence=1)
    assert [m.content for m in await store.list_messages("s1")] == ["hello 1", "done"]
    with pytest.raises(RunNotFound):
        await finish(store, "nope", fence=1)


@pytest.mark.asyncio
async def test_a_session_runs_one_run_at_a_time(store: SqlStore) -> None:
    await start(store, client_request_id="req-1")
    with pytest.raises(SessionBusy) as busy:
        await start(store, run_id="r2", user_message="interrupting")
    assert (busy.value.active_run_id, busy.value.details["session_id"]) == ("r1", "s1")
    assert await store.get_run("r2") is None
    assert [m.content for m in await store.list_messages("s1")] == ["hello 1"]
    # A retry of the running request is a duplicate, as before, not a busy session.
    with pytest.raises(Conflict) as duplicate:
        await start(store, run_id="r3", client_request_id="req-1")
    assert not isinstance(duplicate.value, SessionBusy)
    await finish(store, "r1")
    await start(store, run_id="r2")


@pytest.mark.asyncio
async def test_two_instances_cannot_both_start_a_run_in_one_session(store_url: str) -> None:
    instances = [SqlStore(store_url), SqlStore(store_url)]
    for instance in instances:
        await instance.open()
    try:
        await start(instances[0], owner="i0", lease_seconds=LONG_LEASE)
        with pytest.raises(SessionBusy, match="r1"):
            await start(instances[1], run_id="r2", owner="i1", lease_seconds=LONG_LEASE)
        for attempt in range(10):  # racing starts in fresh sessions: one wins each time
            session_id = f"race{attempt}"
            results = await asyncio.gather(
                *(
                    start(s, session_id=session_id, run_id=f"{session_id}-{i}", owner=f"i{i}")
                    for i, s in enumerate(instances)
                ),
                return_exceptions=True,
            )
            started = [r for r in results if isinstance(r, RunRecord)]
            refused = [r for r in results if isinstance(r, SessionBusy)]
            assert len(started) == len(refused) == 1, results
            assert refused[0].active_run_id == started[0].run_id
            replies = await instances[0].list_messages(session_id)
            assert [m.run_id for m in replies] == [started[0].run_id]
    finally:
        for instance in instances:
            await instance.close()


@pytest.mark.asyncio
async def test_checkpoint_and_finish_without_a_fence_behave_as_before(store: SqlStore) -> None:
    await start(store, owner="i1", lease_seconds=LONG_LEASE)
    assert await store.checkpoint_runs([Checkpoint("r1", "partial", [7])]) == set()
    [taken] = await store.take_over_expired() or [None]
    assert taken is None
    msg = NewMessage(role="assistant", content="done")
    done = await finish(store, "r1", messages=[msg])
    assert done.status is RunStatus.COMPLETED
    # Unfenced, a late finish still overwrites, as a single-process gateway expects.
    await finish(store, "r1", status=RunStatus.FAILED, content="late", messages=[])
    record = await store.get_run("r1")
    assert record is not None
    assert (record.status, record.content) == (RunStatus.FAILED, "late")
