"""`python -m martlet_molt.testing --scripts FILE`: replies from a JSON list of scripts, taken
in turn and started over, read over real HTTP by the official `openai` SDK."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from martlet_molt.testing import READY, FakeUpstream, Script, ScriptFileError, parse_scripts
from tests.process_gateway import clean_env

MESSAGES: Any = [{"role": "user", "content": "Where is The Dispossessed?"}]
DEMO = [
    {"tool_calls": [{"name": "library__find_book", "arguments": {"title": "The Dispossessed"}}]},
    {"tokens": ["It is on ", "shelf SF-12."]},
]
STARTUP_TIMEOUT = 20.0


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "martlet_molt.testing", "--port", "0", *args]


def _ready_url(proc: subprocess.Popen[str]) -> str:
    """The base URL the process prints once it accepts connections."""
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("the fake upstream did not say it was ready")
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if not readable:
            continue
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the fake upstream exited with status {proc.wait()}")
        word, _, url = line.strip().partition(" ")
        if word == READY:
            return url


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`python -m martlet_molt.testing --scripts demo.json` running; its base URL."""
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(DEMO))
    proc = subprocess.Popen(
        _command("--scripts", str(path)),
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env({}),
    )
    try:
        yield _ready_url(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest_asyncio.fixture
async def client(served: str) -> AsyncIterator[AsyncOpenAI]:
    """The official SDK pointed at the fake upstream process."""
    async with AsyncOpenAI(base_url=served, api_key="test", max_retries=0) as c:
        yield c


async def _reply(client: AsyncOpenAI) -> tuple[str, list[tuple[str, str]], str | None]:
    """One streamed reply: its text, its tool calls (name, arguments) and finish reason."""
    stream = await client.chat.completions.create(model="any", messages=MESSAGES, stream=True)
    text = ""
    calls: dict[int, list[str]] = {}
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            entry = calls.setdefault(call.index, ["", ""])
            if call.function and call.function.name:
                entry[0] = call.function.name
            if call.function and call.function.arguments:
                entry[1] += call.function.arguments
        finish = choice.finish_reason or finish
    return text, [(name, args) for name, args in calls.values()], finish


@pytest.mark.asyncio
async def test_scripts_are_taken_in_turn_and_start_over(client: AsyncOpenAI) -> None:
    """The requests get the file's scripts in order, then the list again from its start."""
    tool_call = ("", [("library__find_book", json.dumps({"title": "The Dispossessed"}))])
    for _ in range(2):
        text, calls, finish = await _reply(client)
        assert (text, calls) == tool_call
        assert finish == "tool_calls"
        text, calls, finish = await _reply(client)
        assert (text, calls, finish) == ("It is on shelf SF-12.", [], "stop")
    completion = await client.chat.completions.create(model="any", messages=MESSAGES)
    message = completion.choices[0].message
    assert message.tool_calls is not None
    assert [c.function.name for c in message.tool_calls if c.type == "function"] == [
        "library__find_book"
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (json.dumps([{"tokens": ["a"]}, {"tokenz": ["b"]}]), 'script 2: unknown field "tokenz"'),
        (json.dumps({"tokens": ["a"]}), "expected a JSON list of scripts"),
        ("[]", "the list holds no script"),
    ],
)
def test_a_bad_scripts_file_is_refused_in_one_line(
    tmp_path: Path, content: str, expected: str
) -> None:
    """A bad file stops the command before it listens, with one line saying what is wrong."""
    path = tmp_path / "bad.json"
    path.write_text(content)
    done = subprocess.run(
        _command("--scripts", str(path)),
        capture_output=True,
        text=True,
        env=clean_env({}),
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"python -m martlet_molt.testing: error: {path}: ")
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[{"delay": "0.1"}]', "scripts: script 1, field delay: Input should be a valid number"),
        ('[{"tokens": ["a", 2]}]', "scripts: script 1, field tokens[1]: Input should be a valid"),
        ('[{"tool_calls": [{"arguments": {}}]}]', 'every tool call needs a "name"'),
        ("[1]", "scripts: script 1: expected an object of script fields"),
        ("[{", "scripts: the file: Invalid JSON"),
    ],
)
def test_parse_scripts_refuses(content: str, expected: str) -> None:
    """Wrong types, a nameless tool call, a non-object and broken JSON are refused."""
    with pytest.raises(ScriptFileError) as info:
        parse_scripts(content)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_scripts_reads_fields() -> None:
    """Every key is the dataclass field of that name; tool calls are normalised as in code."""
    first, second, third = parse_scripts(
        json.dumps([*DEMO, {"token_count": 2, "delay": 0, "error_body": {"e": 1}}])
    )
    assert first.tool_calls is not None
    assert first.tool_calls[0]["name"] == "library__find_book"
    assert first.tool_calls[0]["id"].startswith("call_")
    assert json.loads(first.tool_calls[0]["arguments"]) == {"title": "The Dispossessed"}
    assert second == Script(tokens=["It is on ", "shelf SF-12."])
    assert third == Script(token_count=2, delay=0.0, error_body={"e": 1})


@pytest.mark.asyncio
async def test_rotation_comes_after_the_queue() -> None:
    """A model's script wins, then the queue, then the rotation (never the default script)."""
    with FakeUpstream(default_script=Script(tokens=["default"])) as upstream:
        upstream.scripts_by_model["special"] = Script(tokens=["special"])
        upstream.rotate([Script(tokens=["r1"]), Script(tokens=["r2"])])
        upstream.enqueue(Script(tokens=["queued"]))
        async with AsyncOpenAI(base_url=upstream.base_url, api_key="t", max_retries=0) as c:
            texts: list[str] = []
            for model in ("any", "special", "any", "any", "any"):
                completion = await c.chat.completions.create(model=model, messages=MESSAGES)
                texts.append(completion.choices[0].message.content or "")
    assert texts == ["queued", "special", "r1", "r2", "r1"]
