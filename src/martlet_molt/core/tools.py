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
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from martlet_molt.core.arithmetic import CalculatorError, evaluate_arithmetic

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_TOOL_TIMEOUT",
    "CalculatorError",
    "Tool",
    "ToolRegistry",
    "build_registry",
    "calculator",
    "current_time",
    "evaluate_arithmetic",
]

DEFAULT_TOOL_TIMEOUT = 10.0
"""Seconds a tool call may run before it is abandoned."""

_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the OpenAI API accepts

ToolFunction = Callable[..., Awaitable[object]]


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
        """Run the tool on the model's JSON arguments and return text for the model.

        Never raises except ``asyncio.CancelledError``: bad JSON, invalid
        arguments, a failing tool and exceeding ``timeout`` seconds all become
        ``"error: ..."`` strings.
        """
        try:
            raw: object = json.loads(arguments_json) if arguments_json.strip() else {}
        except json.JSONDecodeError as exc:
            return f"error: arguments are not valid JSON: {exc}"
        if not isinstance(raw, dict):
            return "error: arguments must be a JSON object"
        try:
            args = self.args_model.model_validate(raw)
        except ValidationError as exc:
            return f"error: invalid arguments: {_describe_validation_error(exc)}"

        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                result = await self.func(args)
        except TimeoutError as exc:
            if deadline.expired():
                return "error: tool timed out"
            return _describe_exception(exc)
        except Exception as exc:
            return _describe_exception(exc)

        if isinstance(result, str):
            return result
        return pydantic_core.to_json(result, fallback=str).decode()


class ToolRegistry:
    """The tools available to a run, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        """Register a tool; a second tool with the same name is a ``ValueError``."""
        if tool.name in self._tools:
            raise ValueError(f"duplicate tool name {tool.name!r}")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if registered."""
        return self._tools.get(name)

    def names(self) -> list[str]:
        """Registered tool names, in registration order."""
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools=[...]`` list for every registered tool."""
        return [tool.spec for tool in self._tools.values()]

    async def invoke(self, name: str, arguments_json: str) -> str:
        """Call the named tool; unknown names give ``"error: unknown tool NAME"``."""
        tool = self._tools.get(name)
        if tool is None:
            return f"error: unknown tool {name}"
        return await tool.invoke(arguments_json)

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())


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
        return f"error: unknown time zone {timezone!r}; use an IANA name such as 'Europe/Paris'"
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
        return "error: division by zero"
    except CalculatorError as exc:
        return f"error: {exc}"
    return str(result) if isinstance(result, int) else repr(result)


# --- registry of built-ins ----------------------------------------------------------

BUILTIN_TOOLS: dict[str, Tool] = {
    tool.name: tool for tool in (Tool.from_function(current_time), Tool.from_function(calculator))
}
"""The built-in tools, by name."""


def build_registry(names: list[str]) -> ToolRegistry:
    """A registry of the named built-in tools; unknown names raise ``ValueError``."""
    unknown = [name for name in names if name not in BUILTIN_TOOLS]
    if unknown:
        raise ValueError(
            f"unknown tool(s): {', '.join(unknown)}; valid choices: {', '.join(BUILTIN_TOOLS)}"
        )
    return ToolRegistry(BUILTIN_TOOLS[name] for name in dict.fromkeys(names))
