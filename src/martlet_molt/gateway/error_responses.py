"""Every error answer of the HTTP API, rendered in one place: the native shape
`{"error": {"code", "message", "details"}}`, and under `/v1/` (OpenAI's API) OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`, where a request that does not fit the schema
is a 400 (OpenAI's status), not a 422.

- `martlet_error` answers the domain's own errors (`martlet_molt.errors`), each with its status.
- `invalid_request` answers FastAPI's `RequestValidationError` (wrong types, unknown or missing
  fields, bad query parameters, a body that is not JSON) with 422 `invalid_request`: one
  readable line naming the fields and what is wrong, and the errors in `details.errors`
  (inputs echoed only when they are small).
- `http_error` answers Starlette's `HTTPException` (no such endpoint, method not allowed, a body
  that cannot be decoded) with the same error shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from martlet_molt.errors import InvalidRequest, MartletError

MAX_LISTED_PROBLEMS = 3
"""How many problems the one-line message names; `details.errors` has them all."""

MAX_NAME_CHARS = 40
"""Field names come from the client (unknown fields); longer ones are cut in messages."""

MAX_ECHO_CHARS = 200
"""An input is echoed back in `details.errors` only if its JSON is at most this long."""


OPENAI_PREFIX = "/v1/"
"""Paths under it speak OpenAI's protocol, errors included."""


def _openai_type(status: int) -> str:
    """OpenAI's error `type` for a status."""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_response(error: MartletError, *, openai: bool = False) -> JSONResponse:
    """The JSON answer for an error, in the native shape or (`openai`) in OpenAI's."""
    if not openai:
        content = {
            "error": {"code": error.code, "message": error.message, "details": error.details}
        }
        return JSONResponse(content, error.status_code, headers=error.headers or None)
    status = 400 if error.status_code == 422 else error.status_code
    param = error.details.get("param")
    body = {
        "message": error.message,
        "type": _openai_type(status),
        "param": param if isinstance(param, str) else None,
        "code": error.code,
    }
    return JSONResponse({"error": body}, status, headers=error.headers or None)


def _speaks_openai(request: Request) -> bool:
    return request.url.path.startswith(OPENAI_PREFIX)


async def martlet_error(request: Request, exc: Exception) -> JSONResponse:
    """The answer to an error the gateway raised on purpose."""
    assert isinstance(exc, MartletError)
    return error_response(exc, openai=_speaks_openai(request))


# -- validation errors ----------------------------------------------------------------------


def _clip(value: object, limit: int) -> str:
    """`value` as text at most `limit` characters long, and always encodable as UTF-8 (lone
    surrogates from JSON `\\ud800` escapes become backslash escapes)."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _where(loc: Sequence[Any]) -> str:
    """Where a problem is, in words: `body field `message``, `query parameter `format``."""
    if not loc:
        return "the request"
    source, path = loc[0], loc[1:]
    name = ".".join(_clip(part, MAX_NAME_CHARS) for part in path)
    if source == "body":
        return f"body field `{name}`" if name else "the body"
    if source in ("query", "path", "cookie"):
        return f"{source} parameter `{name}`"
    if source == "header":
        return f"header `{name}`"
    return f"`{'.'.join(_clip(part, MAX_NAME_CHARS) for part in loc)}`"


def _problem(error: Mapping[str, Any], content_type: str | None) -> str:
    """One validation error as a short phrase; `content_type` is the request's, when it is not
    JSON (FastAPI then hands the body over as bytes, not parsed)."""
    kind = str(error.get("type", ""))
    loc: Sequence[Any] = tuple(error.get("loc", ()))
    if kind == "json_invalid":
        ctx: Mapping[str, Any] = error.get("ctx") or {}
        position = f" at position {loc[1]}" if len(loc) > 1 else ""
        return (
            f"the body is not valid JSON ({_clip(ctx.get('error', 'decode error'), 100)}{position})"
        )
    where = _where(loc)
    if kind == "missing":
        return (
            "the body is missing: send a JSON object"
            if where == "the body"
            else f"{where} is missing"
        )
    if kind == "extra_forbidden":
        return f"{where} is not a known field"
    if where == "the body" and kind in ("model_attributes_type", "model_type", "dict_type"):
        if content_type is not None:
            return (
                "the body must be a JSON object sent as `Content-Type: application/json` "
                f"(this one is `{_clip(content_type, 100)}`)"
            )
        return "the body must be a JSON object"
    if kind == "string_unicode":
        return f"{where} is not valid Unicode text (an unpaired surrogate such as `\\ud800`)"
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    return f"{where}: {_clip(message, 200)}"


def summarize(errors: Sequence[Mapping[str, Any]], content_type: str | None = None) -> str:
    """One readable line naming the fields and what is wrong with them."""
    problems = [_problem(error, content_type) for error in errors] or ["the request is invalid"]
    line = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    if len(problems) > MAX_LISTED_PROBLEMS:
        line += f"; and {len(problems) - MAX_LISTED_PROBLEMS} more"
    return line


def _echoable(value: Any) -> bool:
    """Whether an input is small enough (and clean enough) to send back."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return False
    return len(text) <= MAX_ECHO_CHARS


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value if not isinstance(value, str) else _clip(value, MAX_ECHO_CHARS)
    if isinstance(value, float) and math.isfinite(value):
        return value
    return _clip(value, MAX_ECHO_CHARS)


def _jsonable(error: Mapping[str, Any]) -> dict[str, Any]:
    """A validation error that is safe to send: its location, type and message, the context
    as plain values, and the input only when it is small."""
    out: dict[str, Any] = {
        "loc": [
            part if isinstance(part, int) else _clip(part, 100) for part in error.get("loc", ())
        ],
        "type": _clip(error.get("type", ""), 100),
        "msg": _clip(error.get("msg", ""), 300),
    }
    if "input" in error and _echoable(error["input"]):
        out["input"] = error["input"]
    ctx: Any = error.get("ctx")
    if isinstance(ctx, dict):
        items: dict[Any, Any] = ctx  # pyright: ignore[reportUnknownVariableType]
        out["ctx"] = {str(key): _scalar(value) for key, value in items.items()}
    return out


def _not_json(content_type: str | None) -> str | None:
    """The request's content type when it is set and is not JSON, else None."""
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return None
    return media


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 `invalid_request` for a request that does not fit the API's schema."""
    assert isinstance(exc, RequestValidationError)
    errors: Sequence[Mapping[str, Any]] = exc.errors()
    content_type = _not_json(request.headers.get("content-type"))
    error = InvalidRequest(summarize(errors, content_type), errors=[_jsonable(e) for e in errors])
    if _speaks_openai(request):
        loc: Sequence[Any] = tuple(errors[0].get("loc", ())) if errors else ()
        param = ".".join(str(part) for part in loc[1:]) if len(loc) > 1 else None
        error = InvalidRequest(error.message, param=param)
    return error_response(error, openai=_speaks_openai(request))


# -- other HTTP errors ----------------------------------------------------------------------


FASTAPI_BODY_ERROR = "There was an error parsing the body"
"""FastAPI's 400 for a JSON body it could not decode; the cause says why."""


def _undecodable(cause: BaseException) -> str:
    """Why a body could not be read as JSON (FastAPI only says "error parsing the body")."""
    if isinstance(cause, UnicodeDecodeError):
        raw = cause.object[cause.start : cause.start + 1]
        byte = f"byte 0x{raw.hex()} " if raw else ""
        return f"the body is not valid UTF-8: {byte}at position {cause.start} cannot be decoded"
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON: it is nested too deeply"
    return f"the body could not be read as JSON: {_clip(cause, 200)}"


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own HTTP errors, in the gateway's error shape. A body FastAPI
    could not decode (it says 400 "There was an error parsing the body") is a 422
    `invalid_request` saying why, like any other body that is not valid JSON."""
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if exc.status_code == 400 and exc.detail == FASTAPI_BODY_ERROR and cause is not None:
        return error_response(InvalidRequest(_undecodable(cause)), openai=_speaks_openai(request))
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        code = "http_error"
    path = _clip(request.url.path, 200)
    if exc.status_code == 404 and exc.detail == HTTPStatus.NOT_FOUND.phrase:
        message = f"no such endpoint: {request.method} {path}"
    elif exc.status_code == 405 and exc.detail == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        message = f"{request.method} is not allowed on {path}"
    else:
        message = _clip(exc.detail, 500)
    if _speaks_openai(request):
        body = {"message": message, "type": _openai_type(exc.status_code), "param": None}
        return JSONResponse({"error": {**body, "code": code}}, exc.status_code, exc.headers)
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": {"code": code, "message": message, "details": {}}},
        headers=exc.headers,
    )
