"""Tools the model may call during a run, and the two safe built-ins.

The agent loop hands ``ToolRegistry.specs()`` to the OpenAI API as ``tools=[...]``
and feeds every tool call the model makes back through ``ToolRegistry.invoke``.
Whatever the model sends -- malformed JSON, wrong arguments, a tool that crashes
or hangs -- comes back as an ``"error: ..."`` string the model can read and
recover from, so a bad tool call never fails the run. Only cancellation
propagates, so cancelling a run still stops its tools.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from martlet_molt.core.arithmetic import CalculatorError, evaluate_arithmetic

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_TOOL_TIMEOUT",
    "CalculatorError",
    "Tool",
    "ToolFailed",
    "ToolOutcome",
    "ToolRegistry",
    "ToolSource",
    "build_registry",
    "calculator",
    "current_time",
    "evaluate_arithmetic",
]

DEFAULT_TOOL_TIMEOUT = 10.0
"""Seconds a tool call may run before it is abandoned."""

_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the OpenAI API accepts

ToolFunction = Callable[..., Awaitable[object]]


class ToolFailed(Exception):
    """A tool's own failure, told to the model as `error: <message>` (no exception name)."""


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a call gave the model, whether it failed, and how long it took."""

    content: str
    failed: bool
    seconds: float


class ToolSource(Protocol):
    """Tools that come and go while the gateway runs (an MCP server's)."""

    @property
    def tools(self) -> Mapping[str, Tool]:
        """The tools offered right now, by the name the model sees."""
        ...


@dataclass(frozen=True)
class Tool:
    """One function the model may call.

    ``func`` receives the validated ``args_model`` instance; build tools with
    ``Tool.from_function`` rather than by hand.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[[BaseModel], Awaitable[object]]
    args_model: type[BaseModel]
    timeout: float = DEFAULT_TOOL_TIMEOUT

    def __post_init__(self) -> None:
        if not _TOOL_NAME_RE.fullmatch(self.name):
            raise ValueError(f"tool name must match {_TOOL_NAME_RE.pattern}, got {self.name!r}")
        if not self.timeout > 0:
            raise ValueError(f"tool timeout must be positive, got {self.timeout!r}")

    @classmethod
    def from_function(
        cls,
        fn: ToolFunction,
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float = DEFAULT_TOOL_TIMEOUT,
    ) -> Tool:
        """Wrap an async function as a tool.

        The parameters' JSON schema comes from the type hints (``Annotated[T,
        Field(description=...)]`` documents a parameter); a function whose only
        parameter is a pydantic model uses that model instead. The description
        defaults to the docstring's first paragraph.
        """
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"tool function {fn!r} must be an async function")
        tool_name = name if name is not None else fn.__name__
        if description is None:
            description = _first_paragraph(inspect.getdoc(fn))
        model = _single_model_parameter(fn)
        if model is not None:
            model_cls = model

            async def call_with_model(args: BaseModel) -> object:
                return await fn(args)

            call = call_with_model
        else:
            model_cls = _model_from_signature(fn, tool_name)
            field_names = tuple(model_cls.model_fields)

            async def call_with_kwargs(args: BaseModel) -> object:
                return await fn(**{field: getattr(args, field) for field in field_names})

            call = call_with_kwargs
        schema = model_cls.model_json_schema()
        schema.pop("title", None)
        return cls(
            name=tool_name,
            description=description,
            parameters=schema,
            func=call,
            args_model=model_cls,
            timeout=timeout,
        )

    @property
    def spec(self) -> dict[str, Any]:
        """This tool's entry for the OpenAI ``tools=[...]`` list."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    async def invoke(self, arguments_json: str) -> str:
        """Run the tool on the model's JSON arguments and return text for the model (see
        `call`)."""
        return (await self.call(arguments_json)).content

    async def call(self, arguments_json: str) -> ToolOutcome:
        """Run the tool on the model's JSON arguments.

        Never raises except ``asyncio.CancelledError``: bad JSON, invalid
        arguments, a failing tool and exceeding ``timeout`` seconds all become
        failed outcomes whose content is an ``"error: ..."`` string.
        """
        started = time.monotonic()

        def failed(content: str) -> ToolOutcome:
            return ToolOutcome(content, True, time.monotonic() - started)

        try:
            raw: object = json.loads(arguments_json) if arguments_json.strip() else {}
        except json.JSONDecodeError as exc:
            return failed(f"error: arguments are not valid JSON: {exc}")
        if not isinstance(raw, dict):
            return failed("error: arguments must be a JSON object")
        try:
            args = self.args_model.model_validate(raw)
        except ValidationError as exc:
            return failed(f"error: invalid arguments: {_describe_validation_error(exc)}")

        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                result = await self.func(args)
        except TimeoutError as exc:
            if deadline.expired():
                return failed(f"error: tool timed out after {self.timeout:g} s")
            return failed(_describe_exception(exc))
        except Exception as exc:
            return failed(_describe_exception(exc))

        text = (
            result
            if isinstance(result, str)
            else pydantic_core.to_json(result, fallback=str).decode()
        )
        return ToolOutcome(text, False, time.monotonic() - started)


class ToolRegistry:
    """The tools available to a run, by name: fixed ones (built-ins, plug-ins) and those that
    sources offer at the moment (MCP servers). A result longer than `max_result_chars` is cut
    and says so."""

    def __init__(
        self,
        tools: Iterable[Tool] = (),
        *,
        sources: Iterable[ToolSource] = (),
        max_result_chars: int | None = None,
    ) -> None:
        self._tools: dict[str, Tool] = {}
        self.sources = list(sources)
        self.max_result_chars = max_result_chars
        self.on_call: Callable[[str, bool, float], None] | None = None
        """Told of every call's end: the tool, whether it failed, its seconds (metrics)."""
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        """Register a tool; a second tool with the same name is a ``ValueError``."""
        if tool.name in self._tools:
            raise ValueError(f"duplicate tool name {tool.name!r}")
        self._tools[tool.name] = tool

    def _current(self) -> dict[str, Tool]:
        if not self.sources:
            return self._tools
        tools = dict(self._tools)
        for source in self.sources:
            for name, tool in source.tools.items():
                tools.setdefault(name, tool)
        return tools

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if offered now."""
        return self._current().get(name)

    def names(self) -> list[str]:
        """The names of the tools offered now, fixed ones first."""
        return list(self._current())

    def specs(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools=[...]`` list of the tools offered now."""
        return [tool.spec for tool in self._current().values()]

    async def invoke(self, name: str, arguments_json: str) -> str:
        """Call the named tool; unknown names give ``"error: unknown tool NAME"``."""
        return (await self.call(name, arguments_json)).content

    async def call(self, name: str, arguments_json: str) -> ToolOutcome:
        """Call the named tool; never raises but `CancelledError` (see `Tool.call`)."""
        tool = self._current().get(name)
        if tool is None:
            return ToolOutcome(f"error: unknown tool {name}", True, 0.0)
        outcome = await tool.call(arguments_json)
        if self.on_call is not None:
            self.on_call(name, outcome.failed, outcome.seconds)
        limit = self.max_result_chars
        if limit is not None and len(outcome.content) > limit:
            cut = len(outcome.content) - limit
            content = f"{outcome.content[:limit]}\n[truncated: {cut} more characters]"
            outcome = ToolOutcome(content, outcome.failed, outcome.seconds)
        return outcome

    def __len__(self) -> int:
        return len(self._current())

    def __contains__(self, name: object) -> bool:
        return name in self._current()

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._current().values())


# --- building tools from functions -------------------------------------------------


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    paragraph = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def _single_model_parameter(fn: ToolFunction) -> type[BaseModel] | None:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) != 1:
        return None
    hint = typing.get_type_hints(fn).get(params[0].name)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return hint
    return None


def _model_from_signature(fn: ToolFunction, tool_name: str) -> type[BaseModel]:
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(
                f"tool function {fn.__name__} has unsupported parameter {param.name!r} "
                f"({param.kind.description}); use plain or keyword-only parameters"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    return create_model(
        f"{tool_name}_arguments",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


def _describe_validation_error(exc: ValidationError) -> str:
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    return "; ".join(parts)


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, ToolFailed):
        return f"error: {exc}"
    message = str(exc)
    kind = type(exc).__name__
    return f"error: {kind}: {message}" if message else f"error: {kind}"


# --- built-in: current_time ---------------------------------------------------------


async def current_time(
    timezone: Annotated[
        str, Field(description="IANA time zone name, e.g. 'UTC' or 'Europe/Paris'.")
    ] = "UTC",
) -> str:
    """Return the current date and time in ISO 8601 format for an IANA time zone."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolFailed(
            f"unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'"
        ) from None
    return datetime.now(zone).isoformat(timespec="seconds")


# --- built-in: calculator -----------------------------------------------------------


async def calculator(
    expression: Annotated[
        str,
        Field(description="Arithmetic using numbers, + - * / // % ** and parentheses."),
    ],
) -> str:
    """Evaluate an arithmetic expression exactly (integers stay integers).

    Supports + - * / // % ** and parentheses over int and float numbers; no
    names, functions or other Python syntax.
    """
    try:
        result = evaluate_arithmetic(expression)
    except ZeroDivisionError:
        raise ToolFailed("division by zero") from None
    except CalculatorError as exc:
        raise ToolFailed(str(exc)) from exc
    return str(result) if isinstance(result, int) else repr(result)


# --- registry of built-ins ----------------------------------------------------------

BUILTIN_TOOLS: dict[str, Tool] = {
    tool.name: tool for tool in (Tool.from_function(current_time), Tool.from_function(calculator))
}
"""The built-in tools, by name."""


def build_registry(names: list[str], available: Mapping[str, Tool] | None = None) -> ToolRegistry:
    """A registry of the named tools (from `available`, by default the built-ins); unknown
    names raise ``ValueError``."""
    choices = BUILTIN_TOOLS if available is None else available
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise ValueError(
            f"unknown tool(s): {', '.join(unknown)}; valid choices: {', '.join(choices)}"
        )
    return ToolRegistry(choices[name] for name in dict.fromkeys(names))
