"""The configuration reference, `docs/configuration.md`, written from `Settings` itself so the
two never drift (a test fails when the file is out of date):

    python -m martlet_molt.config_reference > docs/configuration.md
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from martlet_molt.config import Settings

HEADER = """# Configuration

Every setting comes from the environment, or from a `.env` file in the working directory. This
page is generated from the `Settings` class (`python -m martlet_molt.config_reference >
docs/configuration.md`); edit the class, not the page.

| variable | default | meaning |
|---|---|---|
"""

FOOTER = """
Also read at start: `PYTHONMALLOC`. On Linux with glibc, `martlet-molt serve` restarts itself
once with `PYTHONMALLOC=malloc`, so memory freed after a burst of runs goes back to the system;
set `PYTHONMALLOC=pymalloc` to keep CPython's allocator.

`martlet-molt serve --host 127.0.0.1 --port 8001` (also `python -m martlet_molt serve`) is what
`./scripts/serve` runs; extra arguments are passed through.
"""


def environment_name(name: str, field: FieldInfo) -> str:
    """The variable a setting is read from: its alias if it has one (`OPENAI_API_KEY`), else
    `MARTLET_` and its name."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    return f"MARTLET_{name.upper()}"


def shown_default(field: FieldInfo) -> str:
    """The default as the table shows it."""
    default: Any = field.get_default(call_default_factory=True)
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str):
        return f"`{default}`" if default else "empty"
    if isinstance(default, float):
        return f"`{default:g}`"
    if isinstance(default, dict) and not default:
        return "`{}`"
    return f"`{default}`"


def config_reference() -> str:
    """The whole page: one row per setting, in the order `Settings` declares them."""
    rows: list[str] = []
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{environment_name(name, field)}` | {shown_default(field)} | {meaning} |")
    return HEADER + "\n".join(rows) + "\n" + FOOTER


if __name__ == "__main__":
    print(config_reference(), end="")
