"""Telling "the database cannot be reached" apart from every other store failure.

A run whose final save fails because the database is away (restarting, cut off) keeps its text
and tries again; any other failure (a constraint, a bug, a full disk) is reported at once.
"""

from __future__ import annotations

import socket

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# A pool that hands out no connection in time is as good as an unreachable database.
_UNREACHABLE = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_unreachable(exc: BaseException) -> bool:
    """Whether a store call failed because its database could not be reached."""
    for cause in _causes(exc):
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, _UNREACHABLE):
            return True
        if type(cause).__module__.startswith("asyncpg") and "Connection" in type(cause).__name__:
            return True
    return False
