"""Scripts from a JSON file: a list of objects whose keys are `Script`'s fields, so a demo or
a client's test can script the fake upstream without writing Python."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from martlet_molt.testing.script import Script

_SCRIPTS = TypeAdapter(list[Script])


class ScriptFileError(ValueError):
    """A scripts file that cannot be used; the message is one line naming the file and the
    first thing wrong in it."""


def _place(error: Any) -> str:
    """Where an error is: the file, a script (1-based), and the field (with list indices;
    an unknown field is named by the reason, not here)."""
    loc: tuple[int | str, ...] = error["loc"]
    if error["type"] == "unexpected_keyword_argument":
        loc = loc[:-1]
    if not loc:
        return "the file"
    where = f"script {int(loc[0]) + 1}"
    if len(loc) > 1:
        where += f", field {loc[1]}" + "".join(f"[{p}]" for p in loc[2:] if isinstance(p, int))
    return where


def _reason(error: Any) -> str:
    kind: str = error["type"]
    loc: tuple[int | str, ...] = error["loc"]
    if kind == "unexpected_keyword_argument":
        known = ", ".join(f.name for f in fields(Script))
        return f'unknown field "{loc[-1]}" (a script\'s fields: {known})'
    if kind == "list_type" and not loc:
        return 'expected a JSON list of scripts, e.g. [{"tokens": ["Hello"]}]'
    if kind == "dataclass_type":
        return "expected an object of script fields"
    message: str = error["msg"]
    return message.removeprefix("Value error, ")


def parse_scripts(data: str | bytes, source: str = "scripts") -> list[Script]:
    """The scripts a JSON text holds: a non-empty list of objects with `Script`'s fields as
    keys (strict types: a misspelt field or a string for a number is refused)."""
    try:
        scripts = _SCRIPTS.validate_json(data)
    except ValidationError as exc:
        errors: list[Any] = list(exc.errors(include_url=False))
        first = errors[0]
        # A value of a union type fails once per member: count places, not errors.
        more = len({_place(e) for e in errors} - {_place(first)})
        also = f" (and {more} more place{'s' if more > 1 else ''})" if more else ""
        raise ScriptFileError(f"{source}: {_place(first)}: {_reason(first)}{also}") from None
    if not scripts:
        raise ScriptFileError(f"{source}: the list holds no script")
    return scripts


def load_scripts(path: str | Path) -> list[Script]:
    """Read `parse_scripts` from a file; every failure is a one-line `ScriptFileError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ScriptFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_scripts(data, str(path))
