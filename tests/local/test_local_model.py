"""The out-of-the-box local model: a real SmolLM2 on the CPU through llama.cpp, no provider
variables set, served by a real `martlet-molt serve` process. Generations are kept short: the
local reply cap is set to a few dozen tokens."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from martlet_molt.config import Settings
from martlet_molt.providers.configured import local_model_config
from martlet_molt.providers.local import SMALL_MODEL_SAMPLING, LocalModelServer
from tests.process_gateway import GatewayProcess, clean_env
from tests.sse_client import read_sse

MAX_TOKENS = 48
LONG_STORY = "Write a very long story about a cat who travels the world."
STARTUP_TIMEOUT = 60.0
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway process answering with the packaged local model (two slots)."""
    directory = tmp_path_factory.mktemp("local")
    db_path = directory / "martlet.db"
    env = clean_env(
        {
            "MARTLET_DATABASE_URL": f"sqlite:///{db_path}",
            "MARTLET_LOCAL_MAX_TOKENS": str(MAX_TOKENS),
            "MARTLET_LOCAL_PARALLEL": "2",
            "MARTLET_SSE_PING_SECONDS": "0.5",
        }
    )
    process = GatewayProcess(
        env=env, cwd=directory, db_path=db_path, log_path=directory / "gateway.log"
    )
    process.start(timeout=STARTUP_TIMEOUT)
    try:
        yield process
    finally:
        process.kill()


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_chat_answers_with_no_provider_configured(local_gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=local_gateway.url, timeout=90) as client:
        health = (await client.get("/healthz")).json()
        assert health["model"] == MODEL_NAME
        assert health["provider"].startswith("local llama.cpp")
        answer = (await client.post("/chat", json={"message": "Say hello."})).json()
        assert answer["status"] == "completed", answer
        assert answer["reply"].strip()
        session = (await client.get(f"/sessions/{answer['session_id']}")).json()
        assert [m["role"] for m in session["messages"]] == ["user", "assistant"]
        assert session["messages"][1]["content"] == answer["reply"]
    assert "local model SmolLM2-135M-Instruct.Q4_1 (" in local_gateway.log_text()


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_stream_text_equals_the_saved_reply(local_gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=local_gateway.url, timeout=90) as client:
        stream = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body={"message": "Name three fruits."}
        )
        assert stream.status_code == 200
        kinds = [event.event for event in stream.events]
        assert kinds[-1] == "done"
        assert stream.events[-1].json()["status"] == "completed"
        assert set(kinds[:-1]) == {"delta"}
        text = "".join(event.json()["text"] for event in stream.events[:-1])
        run = (await client.get(f"/runs/{stream.headers['x-run-id']}")).json()
        assert text
        assert run["content"] == text


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_cancel_frees_the_slot_for_the_next_run(local_gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=local_gateway.url, timeout=90) as client:
        prompt = {"message": LONG_STORY}
        stream = await read_sse(
            client, "POST", "/chat/stream?format=json", json_body=prompt, stop_after=3
        )
        run_id = stream.headers["x-run-id"]
        seen = "".join(event.json()["text"] for event in stream.events)
        cancelled = (await client.post(f"/runs/{run_id}/cancel")).json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["content"].startswith(seen)
        session = (await client.get(f"/sessions/{cancelled['session_id']}")).json()
        assert session["messages"][-1]["status"] == "cancelled"
        assert session["messages"][-1]["content"] == cancelled["content"]
        after = (
            await client.post(
                "/chat", json={"message": "Say yes.", "session_id": cancelled["session_id"]}
            )
        ).json()
        assert after["status"] == "completed"


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_reply_cut_at_the_cap_completes_with_finish_reason_length(
    local_gateway: GatewayProcess,
) -> None:
    """The local reply cap ends a long reply as a success that says it was cut; a request's
    own `max_tokens` wins over the cap, and its `temperature` over the sampling defaults."""
    async with httpx.AsyncClient(base_url=local_gateway.url, timeout=90) as client:

        async def ask(**options: float) -> tuple[dict[str, Any], dict[str, Any]]:
            messages = [{"role": "user", "content": LONG_STORY}]
            body = {"model": MODEL_NAME, "messages": messages, **options}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            run = (await client.get(f"/runs/{response.headers['x-run-id']}")).json()
            return response.json(), run

        capped, run = await ask()
        assert capped["choices"][0]["finish_reason"] == "length"
        assert capped["usage"]["completion_tokens"] == MAX_TOKENS
        assert (run["status"], run["error"]) == ("completed", None)
        assert run["content"] == capped["choices"][0]["message"]["content"]
        greedy = [await ask(max_tokens=16, temperature=0) for _ in range(2)]
        for completion, run in greedy:
            assert completion["choices"][0]["finish_reason"] == "length"
            assert completion["usage"]["completion_tokens"] == 16
            assert (run["status"], run["error"]) == ("completed", None)
        first, second = (completion["choices"][0]["message"]["content"] for completion, _ in greedy)
        assert first == second


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_more_runs_than_slots_all_complete(local_gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=local_gateway.url, timeout=150) as client:
        answers = await asyncio.gather(
            *(client.post("/chat", json={"message": f"Say the number {n}."}) for n in range(4))
        )
        bodies = [answer.json() for answer in answers]
        assert [body["status"] for body in bodies] == ["completed"] * 4, bodies
        for body in bodies:
            run = (await client.get(f"/runs/{body['run_id']}")).json()
            assert run["content"] == body["reply"]


@pytest.mark.parametrize(
    ("model_path", "complaint"),
    [("missing.gguf", "local model file not found"), ("not-a-model.gguf", "is not a GGUF model")],
)
def test_a_bad_model_file_stops_serve_with_one_clear_line(
    tmp_path: Path, model_path: str, complaint: str
) -> None:
    (tmp_path / "not-a-model.gguf").write_text("hello")
    result = subprocess.run(
        [sys.executable, "-m", "martlet_molt", "serve", "--port", "1"],
        env=clean_env({"MARTLET_LOCAL_MODEL": str(tmp_path / model_path)}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert complaint in result.stderr
    assert str(tmp_path / model_path) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# llama.cpp's names in `/props` for the `Sampling` fields.
PROPS_NAMES = {"temp": "temperature", "penalty_repeat": "repeat_penalty"}
PROPS_NAMES["penalty_last_n"] = "repeat_last_n"


def test_the_server_samples_with_the_small_model_defaults() -> None:
    """llama.cpp reports the defaults it applies to a request that sets none of its own."""
    config = local_model_config(Settings(_env_file=None))  # pyright: ignore[reportCallIssue]
    server = LocalModelServer(config)
    server.start()
    try:
        props = httpx.get(f"{server.base_url.removesuffix('/v1')}/props", timeout=30).json()
    finally:
        server.stop()
    params = props["default_generation_settings"]["params"]
    given = {k: v for k, v in asdict(SMALL_MODEL_SAMPLING).items() if v is not None}
    assert {"temp", "dry_multiplier"} <= set(given)
    for name, value in given.items():
        assert params[PROPS_NAMES.get(name, name)] == pytest.approx(value), name
