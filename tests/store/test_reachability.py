"""Which store failures mean "the database cannot be reached" (a run retries its save) and
which do not (it reports the failure at once)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from martlet_molt.errors import SessionBusy
from martlet_molt.store.reachability import is_unreachable


@pytest.mark.asyncio
async def test_a_refused_connection_is_unreachable() -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(Exception) as refused:  # noqa: PT011 - whatever the driver raises
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    assert is_unreachable(refused.value)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("refused"),
        TimeoutError("slow"),
        OperationalError("SELECT 1", {}, ConnectionResetError("reset")),
    ],
)
def test_network_errors_are_unreachable(exc: BaseException) -> None:
    assert is_unreachable(exc)


def test_a_wrapped_network_error_is_unreachable() -> None:
    outer = RuntimeError("save failed")
    outer.__cause__ = ConnectionResetError("reset")
    assert is_unreachable(outer)


@pytest.mark.parametrize(
    "exc",
    [
        SessionBusy("s", "run_1"),
        OSError("disk full"),
        ValueError("bug"),
        IntegrityError("INSERT", {}, Exception("unique")),
    ],
)
def test_other_failures_are_not(exc: BaseException) -> None:
    assert not is_unreachable(exc)
