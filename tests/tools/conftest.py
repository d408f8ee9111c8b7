"""Fixtures of the tool tests: the test MCP server's journal, the server over HTTP, and a
fake upstream left with no scripts a cancelled run did not take."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from martlet_molt.testing import FakeUpstream
from tests.tools.mcp_runs import ROOT, TIMEOUT, free_port


@pytest.fixture(autouse=True)
def unused_scripts_dropped(upstream: FakeUpstream) -> Iterator[None]:
    """A run cancelled mid-round leaves its answer queued: the next test must not get it."""
    yield
    upstream.clear_queue()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """Where the test server writes what it saw."""
    path = tmp_path / "journal.txt"
    path.touch()
    return path


@pytest.fixture
def http_server(journal: Path) -> Iterator[str]:
    """The test server over streamable HTTP, in its own process; its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.tools.mcp_test_server", "http", str(port)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "MCP_TEST_JOURNAL": str(journal), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, "the MCP server exited"
            assert time.monotonic() < deadline, "the MCP server did not listen"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(TIMEOUT)
