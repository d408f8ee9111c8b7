"""The Responses API driven by OpenAI's official Node SDK (`tests/node`, pinned in its
package-lock.json): the Node example, create → drop → resume, run as a real script.

`scripts/test` installs the Node packages. Without node or them the test is skipped on a
developer's machine and fails under `CI=true`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

from martlet_molt.testing import FakeUpstream
from tests.conftest import script
from tests.gateway_server import GatewayServer

NODE_PROJECT = Path(__file__).resolve().parents[1] / "node"
RESUME_SCRIPT = NODE_PROJECT / "resume.mjs"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
K = 8
"""The sequence number after which the script drops its first stream."""


def _unavailable(reason: str) -> NoReturn:
    message = f"{reason}; run scripts/test, or `npm ci` in tests/node"
    if IN_CI:
        pytest.fail(f"the Node SDK test cannot run under CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def node() -> str:
    """The node binary, with the locked `openai` package installed next to the script; checked
    before a gateway starts."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not on PATH")
    installed = NODE_PROJECT / "node_modules" / "openai" / "package.json"
    if not installed.is_file():
        _unavailable("tests/node/node_modules has no openai package")
    lock = json.loads((NODE_PROJECT / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/openai"]["version"]
    version = json.loads(installed.read_text())["version"]
    if version != locked:
        _unavailable(f"tests/node has openai {version} installed, the lock says {locked}")
    return node


def _run_node(node: str, *args: str) -> dict[str, Any]:
    """Run the script with no OPENAI_* settings of the caller's leaking in; its JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    done = subprocess.run(
        [node, str(RESUME_SCRIPT), *args],
        cwd=NODE_PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"node exited {done.returncode}:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_node_sdk_drops_a_background_stream_and_resumes_it_exactly(
    node: str, gateway: GatewayServer, upstream: FakeUpstream, model: str
) -> None:
    """A dropped `for await` loop loses nothing: `retrieve(id, {stream, starting_after})` gives
    exactly the rest, numbered on from where the first stream stopped."""
    sent = script(upstream, model, token_count=40, delay=0.01)

    result = _run_node(node, f"{gateway.url}/v1", model, str(K))

    before, after, terminal = result["before"], result["after"], result["terminal"]
    assert result["id"]
    assert before["types"][0] == "response.created"
    assert before["numbers"] == list(range(K + 1))
    last = after["numbers"][-1]
    assert after["numbers"] == list(range(K + 1, last + 1))
    assert before["text"]
    assert after["text"]
    assert before["text"] + after["text"] == sent.text
    assert terminal["type"] == "response.completed"
    assert after["types"].count("response.completed") == 1
    assert terminal["id"] == result["id"]
    assert terminal["status"] == "completed"
    assert terminal["output_text"] == sent.text
