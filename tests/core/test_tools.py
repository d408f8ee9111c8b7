"""Tests for tool schemas, invocation, the registry and the built-in tools."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from martlet_molt.core.tools import (
    BUILTIN_TOOLS,
    DEFAULT_TOOL_TIMEOUT,
    CalculatorError,
    Tool,
    ToolRegistry,
    build_registry,
    current_time,
    evaluate_arithmetic,
)


async def _calculate(expression: str) -> str:
    """The calculator as the model calls it: a failure is its `error: ...` text."""
    return await BUILTIN_TOOLS["calculator"].invoke(json.dumps({"expression": expression}))


# --- sample tools -------------------------------------------------------------------


async def greet(
    name: Annotated[str, Field(description="Who to greet.")],
    times: int = 1,
    shout: bool = False,
) -> str:
    """Greet someone.

    This second paragraph is not part of the description.
    """
    text = " ".join([f"hello {name}"] * times)
    return text.upper() if shout else text


async def add(a: int, b: int) -> dict[str, int]:
    """Add two integers and
    return the sum as an object."""
    return {"sum": a + b}


class SearchArgs(BaseModel):
    """Arguments for search."""

    query: str = Field(description="Search terms.")
    limit: int = 5


async def search(args: SearchArgs) -> list[str]:
    """Search for things."""
    return [f"{args.query}-{i}" for i in range(args.limit)]


async def explode() -> str:
    """Always fails."""
    raise RuntimeError("boom")


async def inner_timeout() -> str:
    """Raises TimeoutError itself, well before any deadline."""
    raise TimeoutError("upstream timed out")


async def sleepy(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "awake"


async def no_args() -> str:
    """Takes nothing."""
    return "ok"


def function_parameters(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = tool.spec["function"]
    return function["parameters"]


# --- building tools -----------------------------------------------------------------


def test_schema_from_type_hints_marks_required_and_optional() -> None:
    tool = Tool.from_function(greet)

    assert tool.name == "greet"
    assert tool.parameters["type"] == "object"
    assert tool.parameters["required"] == ["name"]
    props = tool.parameters["properties"]
    assert props["name"]["type"] == "string"
    assert props["name"]["description"] == "Who to greet."
    assert props["times"] == {"default": 1, "title": "Times", "type": "integer"}
    assert props["shout"]["type"] == "boolean"
    assert props["shout"]["default"] is False
    assert tool.parameters["additionalProperties"] is False
    assert "title" not in tool.parameters


def test_description_is_first_docstring_paragraph() -> None:
    assert Tool.from_function(greet).description == "Greet someone."
    assert (
        Tool.from_function(add).description == "Add two integers and return the sum as an object."
    )


def test_name_and_description_overrides() -> None:
    tool = Tool.from_function(greet, name="say_hi", description="Say hi.")
    assert tool.name == "say_hi"
    assert tool.description == "Say hi."


def test_function_without_parameters_has_empty_object_schema() -> None:
    tool = Tool.from_function(no_args)
    assert tool.parameters["type"] == "object"
    assert tool.parameters["properties"] == {}
    assert "required" not in tool.parameters


def test_single_pydantic_model_parameter_is_used_as_schema() -> None:
    tool = Tool.from_function(search)
    assert tool.args_model is SearchArgs
    assert tool.parameters["required"] == ["query"]
    assert tool.parameters["properties"]["query"]["description"] == "Search terms."
    assert tool.parameters["properties"]["limit"]["default"] == 5


def test_sync_function_is_rejected() -> None:
    def not_async(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="async"):
        Tool.from_function(not_async)  # pyright: ignore[reportArgumentType]


def test_var_args_are_rejected() -> None:
    async def variadic(*items: int) -> int:
        return sum(items)

    with pytest.raises(TypeError, match="items"):
        Tool.from_function(variadic)


def test_invalid_name_and_timeout_are_rejected() -> None:
    with pytest.raises(ValueError, match="name"):
        Tool.from_function(greet, name="has spaces")
    with pytest.raises(ValueError, match="timeout"):
        Tool.from_function(greet, timeout=0)


def test_default_timeout() -> None:
    assert DEFAULT_TOOL_TIMEOUT == 10.0
    assert Tool.from_function(greet).timeout == 10.0


def test_spec_shape() -> None:
    tool = Tool.from_function(greet)
    assert tool.spec == {
        "type": "function",
        "function": {
            "name": "greet",
            "description": "Greet someone.",
            "parameters": tool.parameters,
        },
    }
    json.dumps(tool.spec)  # must be JSON-serialisable for the API


# --- invoking tools -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_invoke_with_good_json() -> None:
    tool = Tool.from_function(greet)
    assert await tool.invoke('{"name": "ada"}') == "hello ada"
    assert await tool.invoke('{"name": "ada", "times": 2, "shout": true}') == "HELLO ADA HELLO ADA"


@pytest.mark.asyncio
async def test_non_string_results_are_json_encoded() -> None:
    assert json.loads(await Tool.from_function(add).invoke('{"a": 2, "b": 3}')) == {"sum": 5}
    result = await Tool.from_function(search).invoke('{"query": "q", "limit": 2}')
    assert json.loads(result) == ["q-0", "q-1"]


@pytest.mark.asyncio
async def test_empty_arguments_mean_no_arguments() -> None:
    tool = Tool.from_function(no_args)
    assert await tool.invoke("") == "ok"
    assert await tool.invoke("{}") == "ok"


@pytest.mark.asyncio
@pytest.mark.parametrize("arguments", ["{", "not json", '{"name": "ada",}'])
async def test_invoke_with_bad_json(arguments: str) -> None:
    result = await Tool.from_function(greet).invoke(arguments)
    assert result.startswith("error: arguments are not valid JSON")


@pytest.mark.asyncio
@pytest.mark.parametrize("arguments", ["[1, 2]", '"ada"', "3", "null"])
async def test_invoke_with_non_object_json(arguments: str) -> None:
    result = await Tool.from_function(greet).invoke(arguments)
    assert result == "error: arguments must be a JSON object"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ("{}", "name: Field required"),
        ('{"name": "ada", "times": "many"}', "times:"),
        ('{"name": "ada", "colour": "red"}', "colour: Extra inputs are not permitted"),
    ],
)
async def test_invoke_with_invalid_arguments(arguments: str, fragment: str) -> None:
    result = await Tool.from_function(greet).invoke(arguments)
    assert result.startswith("error: invalid arguments: ")
    assert fragment in result


@pytest.mark.asyncio
async def test_invoke_validates_pydantic_model_arguments() -> None:
    result = await Tool.from_function(search).invoke('{"limit": 2}')
    assert result.startswith("error: invalid arguments: ")
    assert "query" in result


@pytest.mark.asyncio
async def test_tool_raising_becomes_error_string() -> None:
    result = await Tool.from_function(explode).invoke("{}")
    assert result == "error: RuntimeError: boom"


@pytest.mark.asyncio
async def test_tool_timeout() -> None:
    tool = Tool.from_function(sleepy, timeout=0.05)
    assert await tool.invoke('{"seconds": 5}') == "error: tool timed out after 0.05 s"
    assert await tool.invoke('{"seconds": 0}') == "awake"


@pytest.mark.asyncio
async def test_timeout_error_raised_by_the_tool_is_not_a_timeout() -> None:
    result = await Tool.from_function(inner_timeout).invoke("{}")
    assert result == "error: TimeoutError: upstream timed out"


@pytest.mark.asyncio
async def test_cancellation_propagates() -> None:
    tool = Tool.from_function(sleepy)
    task = asyncio.create_task(tool.invoke('{"seconds": 5}'))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- registry -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_registry_basics() -> None:
    greet_tool = Tool.from_function(greet)
    registry = ToolRegistry([greet_tool, Tool.from_function(add)])

    assert len(registry) == 2
    assert "greet" in registry
    assert "nope" not in registry
    assert registry.names() == ["greet", "add"]
    assert registry.get("greet") is greet_tool
    assert registry.get("nope") is None
    assert [spec["function"]["name"] for spec in registry.specs()] == ["greet", "add"]
    assert [tool.name for tool in registry] == ["greet", "add"]
    assert await registry.invoke("greet", '{"name": "bo"}') == "hello bo"


@pytest.mark.asyncio
async def test_registry_unknown_tool() -> None:
    registry = ToolRegistry()
    assert len(registry) == 0
    assert await registry.invoke("rm_rf", "{}") == "error: unknown tool rm_rf"


def test_registry_rejects_duplicate_names() -> None:
    registry = ToolRegistry([Tool.from_function(greet)])
    with pytest.raises(ValueError, match="duplicate"):
        registry.add(Tool.from_function(greet))


def test_build_registry_with_builtins() -> None:
    registry = build_registry(["calculator", "current_time", "calculator"])
    assert registry.names() == ["calculator", "current_time"]
    assert set(BUILTIN_TOOLS) == {"calculator", "current_time"}
    assert len(build_registry([])) == 0


def test_build_registry_unknown_name_lists_valid_choices() -> None:
    with pytest.raises(ValueError, match="web_search") as info:
        build_registry(["calculator", "web_search"])
    assert "calculator" in str(info.value)
    assert "current_time" in str(info.value)


# --- calculator ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("2 * (3 + (4 - 1))", "12"),
        ("10 - 4 - 3", "3"),
        ("-3 + 5", "2"),
        ("+4", "4"),
        ("--4", "4"),
        ("-2 ** 2", "-4"),
        ("(-2) ** 2", "4"),
        ("2 ** 3 ** 2", "512"),
        ("2 ** -1", "0.5"),
        ("7 / 2", "3.5"),
        ("4 / 2", "2.0"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("-7 % 3", "2"),
        ("7.5 // 2", "3.0"),
        ("5.5 % 2", "1.5"),
        ("0.1 + 0.2", "0.30000000000000004"),
        ("1.5 * 2", "3.0"),
        ("2 ** 0.5", "1.4142135623730951"),
        ("1e3 + 1", "1001.0"),
        ("2 ** 100", "1267650600228229401496703205376"),
        ("1_000 * 3", "3000"),
        ("  1 + 1  ", "2"),
    ],
)
async def test_calculator_correctness(expression: str, expected: str) -> None:
    assert await _calculate(expression) == expected


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("__import__('os')", "function calls are not allowed"),
        ("__import__('os').system('ls')", "not allowed"),
        ("x + 1", "names are not allowed"),
        ("abs(-1)", "function calls are not allowed"),
        ("(1).real", "attribute access is not allowed"),
        ("'a' * 3", "only int and float numbers"),
        ("'abc'", "only int and float numbers"),
        ("1 < 2", "comparisons are not allowed"),
        ("1 and 2", "not allowed"),
        ("True + 1", "only int and float numbers"),
        ("1j * 2", "only int and float numbers"),
        ("[1, 2]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("1 << 100000", "operator '<<' is not allowed"),
        ("~1", "operator '~' is not allowed"),
        ("import os", "not a valid arithmetic expression"),
        ("1 +", "not a valid arithmetic expression"),
        ("", "not a valid arithmetic expression"),
    ],
)
async def test_calculator_rejects_non_arithmetic(expression: str, fragment: str) -> None:
    result = await _calculate(expression)
    assert result.startswith("error: ")
    assert fragment in result


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "expression",
    [
        "9**9**9",
        "2 ** 1001",
        "2 ** -1001",
        "10 ** 1000",
        "(10 ** 500) ** 3",
        "(2 ** 1000) ** 1000",
        "10 ** 999 * 10",
        "1e308 * 10",
        "1e999",
        "(10 ** 400) / 3",
        "(-8) ** 0.5",
    ],
)
async def test_calculator_rejects_resource_abuse(expression: str) -> None:
    result = await _calculate(expression)
    assert result.startswith("error: ")


@pytest.mark.asyncio
async def test_calculator_allows_results_up_to_the_limit() -> None:
    assert await _calculate("10 ** 999") == "1" + "0" * 999
    assert await _calculate("2 ** 1000 // 2 ** 999") == "2"


@pytest.mark.asyncio
async def test_calculator_rejects_long_input() -> None:
    result = await _calculate("1+" * 250 + "1")
    assert result == "error: expression is longer than 500 characters"
    assert await _calculate("1+" * 249 + "1") == "250"


@pytest.mark.asyncio
@pytest.mark.parametrize("expression", ["1 / 0", "1 // 0", "5 % 0", "1.0 / 0.0", "0 ** -1"])
async def test_calculator_division_by_zero(expression: str) -> None:
    assert await _calculate(expression) == "error: division by zero"


def test_evaluate_arithmetic_returns_numbers() -> None:
    assert evaluate_arithmetic("6 * 7") == 42
    assert isinstance(evaluate_arithmetic("6 * 7"), int)
    assert evaluate_arithmetic("1 / 4") == 0.25
    with pytest.raises(CalculatorError):
        evaluate_arithmetic("x")


@pytest.mark.asyncio
async def test_calculator_tool_via_registry() -> None:
    registry = build_registry(["calculator"])
    assert await registry.invoke("calculator", '{"expression": "(2 + 3) * 4"}') == "20"
    result = await registry.invoke("calculator", '{"expression": "__import__(\'os\')"}')
    assert result.startswith("error: ")
    result = await registry.invoke("calculator", "{}")
    assert result.startswith("error: invalid arguments: expression")


# --- current_time -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_current_time_defaults_to_utc() -> None:
    before = datetime.now().astimezone()
    parsed = datetime.fromisoformat(await current_time())
    assert parsed.utcoffset() == timedelta(0)
    assert abs(parsed - before) < timedelta(seconds=5)


@pytest.mark.asyncio
async def test_current_time_in_explicit_zone() -> None:
    parsed = datetime.fromisoformat(await current_time("Asia/Kolkata"))
    assert parsed.utcoffset() == timedelta(hours=5, minutes=30)  # no DST in India
    parsed = datetime.fromisoformat(await current_time("UTC"))
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "Europe", "../etc/passwd", "/etc/localtime", ""]
)
async def test_current_time_bad_zone(zone: str) -> None:
    outcome = await BUILTIN_TOOLS["current_time"].call(json.dumps({"timezone": zone}))
    assert outcome.failed
    assert outcome.content.startswith("error: unknown time zone")


@pytest.mark.asyncio
async def test_current_time_tool_via_registry() -> None:
    registry = build_registry(["current_time"])
    result = await registry.invoke("current_time", '{"timezone": "Asia/Tokyo"}')
    assert datetime.fromisoformat(result).utcoffset() == timedelta(hours=9)
    assert (await registry.invoke("current_time", "{}")).endswith("+00:00")
    bad = await registry.invoke("current_time", '{"timezone": "Nowhere/Land"}')
    assert bad.startswith("error: unknown time zone")
