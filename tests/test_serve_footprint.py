"""What `martlet-molt serve` loads and which allocator it runs on, checked in a real process.

Each check runs `python -c PROBE serve ...`: the real command line (`cli.main`), with the
server's `run` replaced by one that opens the app's lifespan (store, provider, run manager),
prints what the process has loaded, and stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from martlet_molt.core import memory

PROBE = """
import asyncio, json, os, sys

print("START " + json.dumps({"pid": os.getpid(), "blocks": sys.getallocatedblocks()}), flush=True)

from martlet_molt import server

def run(self, sockets=None):
    async def probe():
        async with self.app.router.lifespan_context(self.app):
            state = {
                "pid": os.getpid(),
                "blocks": sys.getallocatedblocks(),
                "allocator": os.environ.get("PYTHONMALLOC"),
                "modules": sorted(sys.modules),
            }
            print("SERVING " + json.dumps(state), flush=True)
    asyncio.run(probe())

server.GatewayServer.run = run
from martlet_molt.cli import main
main()
"""

ON_GLIBC = memory._malloc_trim is not None  # pyright: ignore[reportPrivateUsage]


def _run_serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the probe as `serve` with an openai upstream configured (nothing listens there:
    the lifespan does not call it)."""
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MARTLET_", "OPENAI_")) and key != "PYTHONMALLOC"
    }
    clean.update(
        {
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "OPENAI_API_KEY": "test-key",
            "MARTLET_PROVIDER": "openai",
            "MARTLET_LOG_LEVEL": "WARNING",
        }
    )
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", PROBE, "serve", "--port", "0"],
        cwd=tmp_path,  # the default SQLite file lands here; no .env is read
        env=clean,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _serve(tmp_path: Path, **env: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`_run_serve`, which must succeed: its START lines and its SERVING state."""
    completed = _run_serve(tmp_path, **env)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    starts = [
        json.loads(line.removeprefix("START "))
        for line in completed.stdout.splitlines()
        if line.startswith("START ")
    ]
    serving = [line for line in completed.stdout.splitlines() if line.startswith("SERVING ")]
    assert len(serving) == 1, output
    return starts, json.loads(serving[0].removeprefix("SERVING "))


def test_serve_with_an_openai_upstream_loads_no_local_model_and_no_terminal_client(
    tmp_path: Path,
) -> None:
    # A first start, on a new database: the schema is migrated by a child process, so
    # Alembic (which loads Mako and Pygments) never enters the serving one.
    _, state = _serve(tmp_path, PYTHONMALLOC="pymalloc")
    modules = set(state["modules"])
    assert "openai" in modules  # the provider was opened
    unwanted = {
        "alembic",
        "xllamacpp",
        "martlet_molt.providers.local",
        "martlet_molt.terminal",
        "martlet_molt.client",
        "rich",
        "markdown_it",
        "pygments",
        "sqlalchemy.ext.asyncio",  # SQLite runs on threads; only PostgreSQL needs it
    }
    assert not modules & unwanted


@pytest.mark.skipif(not ON_GLIBC, reason="re-executing on malloc is for Linux with glibc")
def test_serve_runs_itself_again_on_glibc_malloc(tmp_path: Path) -> None:
    starts, state = _serve(tmp_path)
    assert len(starts) == 2  # the first start re-executed the process
    # The same process, as a supervisor sees it.
    assert starts[0]["pid"] == starts[1]["pid"] == state["pid"]
    assert starts[0]["blocks"] > 0  # pymalloc counts its blocks
    assert starts[1]["blocks"] == 0 == state["blocks"]  # malloc does not
    assert state["allocator"] == "malloc"


def test_serve_keeps_the_allocator_pythonmalloc_names(tmp_path: Path) -> None:
    starts, state = _serve(tmp_path, PYTHONMALLOC="pymalloc")
    assert len(starts) == 1
    assert state["blocks"] > 0
    assert state["allocator"] == "pymalloc"


def test_serve_refuses_a_database_newer_than_the_code_saying_so(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from martlet_molt.store.migrations import HEAD_REVISION

    _serve(tmp_path)  # migrates the default SQLite file in the working directory
    engine = create_engine(f"sqlite:///{tmp_path / 'martlet.db'}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    refused = _run_serve(tmp_path)
    assert refused.returncode == 1
    assert f"revision 9999, newer than this code's {HEAD_REVISION}" in refused.stderr
    assert "SERVING" not in refused.stdout


def _loaded_after(code: str) -> set[str]:
    completed = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(json.loads(completed.stdout.splitlines()[-1]))


def test_the_command_line_module_loads_no_terminal_client() -> None:
    loaded = _loaded_after("import martlet_molt.cli")
    assert "martlet_molt.terminal" not in loaded
    assert "rich" not in loaded


def test_metrics_classify_upstream_errors_without_loading_the_sdk() -> None:
    loaded = _loaded_after(
        "from martlet_molt.errors import UpstreamHttpError, UpstreamTimeout\n"
        "from martlet_molt.metrics import classify_upstream_error as kind\n"
        "assert kind(UpstreamTimeout('silent')) == 'timeout'\n"
        "assert kind(UpstreamHttpError(503, 'busy')) == 'http_5xx'"
    )
    assert "openai" not in loaded


def test_the_whole_command_set_is_there() -> None:
    from typer.main import get_command

    from martlet_molt.cli import cli

    group: Any = get_command(cli)
    assert {"serve", "version", "db", "chat", "attach", "sessions", "runs"} <= set(group.commands)
