"""`MARTLET_MCP_CONFIG`: the MCP servers whose tools the model may call, in the file format
people already have (Claude Desktop, Cursor, LibreChat):

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "."],
                  "env": {"TOKEN": "${FILES_TOKEN}"}, "cwd": "/srv", "allow": ["read_file"]},
        "search": {"url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer ${SEARCH_KEY}"}, "deny": ["delete"]}}}

A server has a `command` (stdio: the gateway starts and owns the process) or a `url`
(streamable HTTP). `allow` (only these tools) and `deny` (all but these) filter its tools by
their own names. `${NAME}` in `args`, `env`, `cwd`, `url` and `headers` is replaced by that
environment variable of the gateway, so secrets stay out of the file; the values are never
logged (`describe` names a server by its command or URL host only).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from martlet_molt.errors import SettingsRefused

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    """One configured MCP server."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict[str, str])
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict[str, str])
    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    def offers(self, tool: str) -> bool:
        """Whether the allow and deny lists let the model see this tool."""
        if tool in self.deny:
            return False
        return self.allow is None or tool in self.allow

    def describe(self) -> str:
        """How logs and `GET /tools` name the server: no argument, header or secret."""
        if self.url is not None:
            return f"streamable HTTP {urlsplit(self.url).netloc}"
        return f"stdio {Path(self.command or '').name}"


def _expand(value: str, where: str) -> str:
    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise SettingsRefused(f"MCP config: {where} names ${{{name}}}, which is not set")
        return os.environ[name]

    return _VARIABLE.sub(variable, value)


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in cast("list[Any]", value)):
        raise SettingsRefused(f"MCP config: {where} must be a list of strings")
    return cast("list[str]", value)


def _table(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise SettingsRefused(f"MCP config: {where} must be an object of strings")
    table = cast("dict[str, Any]", value)
    if not all(isinstance(v, str) for v in table.values()):
        raise SettingsRefused(f"MCP config: {where} must be an object of strings")
    return {key: _expand(v, f"{where}.{key}") for key, v in table.items()}


def _server(name: str, entry: object) -> McpServerConfig:
    where = f"mcpServers.{name}"
    if not isinstance(entry, dict):
        raise SettingsRefused(f"MCP config: {where} must be an object")
    spec = cast("dict[str, Any]", entry)
    command, url = spec.get("command"), spec.get("url")
    if (command is None) == (url is None):
        raise SettingsRefused(f"MCP config: {where} needs either `command` or `url`")
    allow = spec.get("allow")
    return McpServerConfig(
        name=name,
        command=_expand(command, f"{where}.command") if isinstance(command, str) else None,
        args=tuple(
            _expand(a, f"{where}.args") for a in _strings(spec.get("args", []), f"{where}.args")
        ),
        env=_table(spec.get("env", {}), f"{where}.env"),
        cwd=_expand(spec["cwd"], f"{where}.cwd") if isinstance(spec.get("cwd"), str) else None,
        url=_expand(url, f"{where}.url") if isinstance(url, str) else None,
        headers=_table(spec.get("headers", {}), f"{where}.headers"),
        allow=None if allow is None else frozenset(_strings(allow, f"{where}.allow")),
        deny=frozenset(_strings(spec.get("deny", []), f"{where}.deny")),
    )


def load_mcp_config(path: str) -> list[McpServerConfig]:
    """The servers of a config file; a file that cannot be used stops start-up, saying why."""
    try:
        document: object = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsRefused(f"MCP config {path} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise SettingsRefused(f"MCP config {path} is not valid JSON: {exc}") from exc
    servers = (
        cast("dict[str, Any]", document).get("mcpServers") if isinstance(document, dict) else None
    )
    if not isinstance(servers, dict):
        raise SettingsRefused(f"MCP config {path} needs an object `mcpServers`")
    return [_server(str(name), entry) for name, entry in cast("dict[str, Any]", servers).items()]
