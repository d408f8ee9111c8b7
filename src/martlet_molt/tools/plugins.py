"""Python plug-ins: tools from installed packages, through the entry-point group
`martlet_molt.tools`.

A package declares, in its `pyproject.toml`:

    [project.entry-points."martlet_molt.tools"]
    weather = "my_package.tools:weather"

and the entry point names an async function (its parameters' type hints, or a single pydantic
model parameter, give the JSON schema, as for the built-ins) or a ready `Tool`. The tool is
offered under the entry point's name once `MARTLET_TOOLS` names it.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points

from loguru import logger

from martlet_molt.core.tools import Tool

GROUP = "martlet_molt.tools"


def plugin_tools() -> dict[str, Tool]:
    """Every installed plug-in tool, by name; one that cannot load is logged and left out."""
    tools: dict[str, Tool] = {}
    for entry in entry_points(group=GROUP):
        try:
            found: object = entry.load()
            if isinstance(found, Tool):
                tool = found
            elif inspect.iscoroutinefunction(found):
                tool = Tool.from_function(found, name=entry.name)
            else:
                raise TypeError(f"{entry.value} is neither a Tool nor an async function")
        except Exception as exc:
            logger.error(
                "tool plug-in {} ({}) cannot be loaded: {!r}", entry.name, entry.value, exc
            )
            continue
        tools[entry.name] = tool
    return tools
