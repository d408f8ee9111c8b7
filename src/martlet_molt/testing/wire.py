"""OpenAI's chat-completions wire format, byte for byte: the chunks of a stream, a whole
completion, usage, and error bodies. What a client parses comes from here, so a client tested
against the fake upstream meets the same shapes as against OpenAI."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, cast

from martlet_molt.testing.script import Script

SYSTEM_FINGERPRINT = "fp_fake_upstream"
DONE = b"data: [DONE]\n\n"
MALFORMED = b"data: {not json\n\n"
"""A data line no JSON parser accepts (`Script.malformed_after`)."""
DEFAULT_MODEL = "fake-model"

_DEFAULT_CODE = "__default__"
_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "invalid_request_error", None),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def sse_event(obj: Any) -> bytes:
    """One `data:` event holding `obj` as compact JSON, as OpenAI frames each chunk."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def error_body(
    status: int, message: str | None = None, code: str | None = _DEFAULT_CODE
) -> dict[str, Any]:
    """An OpenAI-style error envelope for `status`, so SDKs raise their matching exception
    (`code` left out: OpenAI's own code for that status)."""
    default_msg, err_type, default_code = _ERROR_DEFAULTS.get(
        status,
        ("Upstream error.", "server_error" if status >= 500 else "invalid_request_error", None),
    )
    return {
        "error": {
            "message": message if message is not None else default_msg,
            "type": err_type,
            "param": None,
            "code": default_code if code == _DEFAULT_CODE else code,
        }
    }


def member(obj: Any, key: str) -> Any:
    """`obj[key]` when `obj` is a JSON object, else None: reading a request's body without
    trusting its shape."""
    return cast(dict[str, Any], obj).get(key) if isinstance(obj, dict) else None


def usage(body: dict[str, Any], script: Script) -> dict[str, int]:
    """The usage object: the script's counts, else the request's word count as prompt tokens
    and the number of content chunks as completion tokens."""
    prompt = script.prompt_tokens
    if prompt is None:
        prompt = 0
        messages: Any = body.get("messages")
        for msg in cast(list[Any], messages) if isinstance(messages, list) else []:
            content = member(msg, "content")
            prompt += len(str(content).split()) if content is not None else 0
    completion = script.completion_tokens
    if completion is None:
        completion = script.chunk_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_id() -> str:
    """A fresh `chatcmpl-…` id, as every OpenAI completion has."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


class ChunkEncoder:
    """Encodes one streamed completion's `chat.completion.chunk` events: they share one id,
    creation time and model, and carry `"usage": null` when the client asked for usage."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        """Fix what every chunk of this completion repeats."""
        self.id = completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        """A chunk with one choice carrying `delta` (and the finish reason on the last one)."""
        obj = self._envelope(
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        if self.include_usage:
            obj["usage"] = None
        return sse_event(obj)

    def usage(self, usage: dict[str, int]) -> bytes:
        """The closing usage chunk: no choices, the usage object."""
        return sse_event({**self._envelope([]), "usage": usage})


def completion(body: dict[str, Any], script: Script, model: str) -> dict[str, Any]:
    """A whole (non-streamed) `chat.completion` object for `script`."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": script.text if (script.chunks or not script.tool_calls) else None,
        "refusal": None,
    }
    if script.tool_calls:
        message["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in script.tool_calls
        ]
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": script.resolved_finish_reason,
            }
        ],
        "usage": usage(body, script),
    }
