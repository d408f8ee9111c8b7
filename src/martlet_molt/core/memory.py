"""Giving memory back to the system after many stream logs were evicted at once.

CPython keeps freed memory for reuse (pymalloc arenas stay while any object in them lives;
glibc does not trim a fragmented heap), so after a burst of runs the process's RSS stays at its
high-water mark. After a large eviction a full collection plus glibc's `malloc_trim` returns
what can be returned; elsewhere (no glibc) only the collection runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

TRIM_AFTER_EVICTED = 50
"""Evicting at least this many logs in one pass is worth a collection and a trim."""


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # pyright: ignore[reportUnknownVariableType]


_malloc_trim = _find_malloc_trim()


def release_memory() -> None:
    """Collect garbage, then hand free heap pages back to the system where glibc allows."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
