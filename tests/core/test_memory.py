"""Memory release after large evictions."""

from __future__ import annotations

import sys

import pytest

from martlet_molt.core import memory


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only"
)
def test_malloc_trim_is_found_and_release_runs() -> None:
    assert memory._malloc_trim is not None  # pyright: ignore[reportPrivateUsage]
    memory.release_memory()
