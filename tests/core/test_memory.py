"""Memory release after large evictions, and the choice of allocator."""

from __future__ import annotations

import asyncio
import sys

import pytest

from martlet_molt.core import memory

ON_GLIBC = memory._malloc_trim is not None  # pyright: ignore[reportPrivateUsage]


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only"
)
def test_malloc_trim_is_found_and_release_runs() -> None:
    assert memory._malloc_trim is not None  # pyright: ignore[reportPrivateUsage]
    memory.release_memory()


@pytest.mark.skipif(not ON_GLIBC, reason="re-executing on malloc is for Linux with glibc")
def test_without_pythonmalloc_the_command_runs_again_with_the_same_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    if sys.flags.ignore_environment:
        assert memory.system_malloc_command() is None
    else:
        assert memory.system_malloc_command() == [sys.executable, *sys.orig_argv[1:]]


@pytest.mark.parametrize("value", ["pymalloc", "malloc", "pymalloc_debug"])
def test_a_pythonmalloc_already_set_is_kept(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PYTHONMALLOC", value)
    assert memory.system_malloc_command() is None


def test_use_system_malloc_returns_when_nothing_is_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    memory.use_system_malloc()  # would have replaced this process otherwise


def test_the_allocator_is_described(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    text = memory.allocator_description()
    if memory.uses_system_malloc():
        assert "on the C library's malloc" in text
    else:
        assert "on pymalloc" in text
    assert "PYTHONMALLOC=pymalloc" in text


@pytest.mark.asyncio
async def test_release_on_a_loop_follows_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release on the event loop schedules one more pass a little later (connections of the
    released runs free their memory after it); further releases meanwhile add none."""
    passes: list[str] = []
    monkeypatch.setattr(memory, "_collect_and_trim", lambda: passes.append("pass"))
    monkeypatch.setattr(memory, "FOLLOW_UP_SECONDS", 0.05)
    monkeypatch.setattr(memory, "_follow_up", None)
    memory.release_memory()
    memory.release_memory()
    assert passes == ["pass", "pass"]
    await asyncio.sleep(0.2)
    assert passes == ["pass", "pass", "pass"]  # one follow-up for both
    memory.release_memory()
    await asyncio.sleep(0.2)
    assert len(passes) == 5  # a later release gets its own follow-up


def test_release_off_a_loop_schedules_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_follow_up", None)
    memory.release_memory()
    assert memory._follow_up is None  # pyright: ignore[reportPrivateUsage]


@pytest.mark.asyncio
async def test_idle_connections_are_released_before_the_collection_and_trim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What sits idle is closed first, so that the trim finds its memory already freed."""
    order: list[str] = []
    monkeypatch.setattr(memory, "_collect_and_trim", lambda: order.append("trim"))
    monkeypatch.setattr(memory, "_follow_up", None)

    async def close_store() -> None:
        order.append("store")

    async def close_upstream() -> None:
        order.append("upstream")

    await memory.release_idle_then_memory(close_store, close_upstream)
    assert order == ["store", "upstream", "trim"]
