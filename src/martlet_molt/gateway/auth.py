"""API keys: who is asking, and whether the gateway may listen where it was told to.

`MARTLET_API_KEYS` holds one key or many, comma-separated. When the app is built each key is
hashed (SHA-256) and only the digests are kept; a request's key is hashed the same way and
compared digest to digest with `hmac.compare_digest`. Keys are never stored or logged in clear.

Each key is a principal, `key_` + the first 16 hex digits of its digest: the sessions and runs
a key creates belong to it, and any other principal gets 404 for them. With no keys, every
request is the anonymous principal `""`, and `check_bind` keeps the server on loopback.

Clients send `Authorization: Bearer <key>`. A browser's EventSource cannot set headers, so the
GET stream endpoints also take the key as `?api_key=<key>` (`StreamPrincipal`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from martlet_molt.config import Settings
from martlet_molt.errors import Unauthorized

ANONYMOUS = ""
"""The principal of every request while API keys are off."""

PRINCIPAL_PREFIX = "key_"
PRINCIPAL_HEX_DIGITS = 16

LOOPBACK_NAMES = frozenset({"localhost"})


def digest_of(key: str) -> bytes:
    """The SHA-256 digest of a key: the only form in which the gateway keeps one."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def principal_of(digest: bytes) -> str:
    """The principal a key's digest stands for."""
    return PRINCIPAL_PREFIX + digest.hex()[:PRINCIPAL_HEX_DIGITS]


class ApiKeys:
    """The configured keys, held as digests only."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests: tuple[bytes, ...] = tuple(dict.fromkeys(digest_of(k) for k in keys))

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The keys of `MARTLET_API_KEYS`."""
        return cls(settings.api_key_list)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (then every guarded endpoint needs one)."""
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def principal_for(self, key: str) -> str | None:
        """The principal of this key, or None when it is not a configured key. Every digest is
        compared, so the time taken says nothing about which one matched."""
        candidate = digest_of(key)
        found: bytes | None = None
        for digest in self._digests:
            if hmac.compare_digest(digest, candidate):
                found = digest
        return principal_of(found) if found is not None else None

    def __repr__(self) -> str:
        return f"ApiKeys({len(self)} keys)"


def get_api_keys(request: Request) -> ApiKeys:
    """The app's keys (built by `create_app`)."""
    keys: ApiKeys = request.app.state.api_keys
    return keys


_bearer = HTTPBearer(
    auto_error=False,
    description="One of `MARTLET_API_KEYS`, when any is configured.",
)

Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def authenticate(keys: ApiKeys, key: str | None) -> str:
    """The principal for a presented key (None when none was presented); raises
    `Unauthorized` when keys are on and the key is missing or wrong."""
    if not keys.enabled:
        return ANONYMOUS
    if not key:
        raise Unauthorized("an API key is required: send `Authorization: Bearer <key>`")
    principal = keys.principal_for(key)
    if principal is None:
        raise Unauthorized("the API key is not valid")
    return principal


async def require_principal(request: Request, credentials: Bearer) -> str:
    """Dependency: the caller's principal, from `Authorization: Bearer <key>`."""
    return authenticate(get_api_keys(request), credentials.credentials if credentials else None)


async def require_stream_principal(
    request: Request,
    credentials: Bearer,
    api_key: Annotated[
        str | None,
        Query(
            description="The API key, for clients that cannot send headers (a browser's "
            "EventSource). `Authorization: Bearer` is preferred and wins when both are sent."
        ),
    ] = None,
) -> str:
    """Dependency for GET stream endpoints: the bearer header, else `?api_key=`."""
    key = credentials.credentials if credentials else api_key
    return authenticate(get_api_keys(request), key)


# -- where the server may listen ------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (127.0.0.0/8, ::1) or `localhost`."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True)
class BindCheck:
    """Whether the server may listen on a host; `message` is a warning to log when it may,
    the reason when it may not, and empty when there is nothing to say."""

    allowed: bool
    message: str = ""


def check_bind(host: str, settings: Settings) -> BindCheck:
    """Without API keys the gateway serves loopback only, unless explicitly allowed."""
    if settings.api_key_list:
        return BindCheck(allowed=True)
    if is_loopback(host):
        return BindCheck(
            allowed=True,
            message="no API keys: serving loopback only (set MARTLET_API_KEYS to serve "
            "other addresses)",
        )
    if settings.allow_unauthenticated:
        return BindCheck(
            allowed=True,
            message=f"no API keys: serving {host} WITHOUT authentication "
            "(MARTLET_ALLOW_UNAUTHENTICATED is set)",
        )
    return BindCheck(
        allowed=False,
        message=f"refusing to serve {host} without API keys: set MARTLET_API_KEYS "
        "(comma-separated keys), bind to 127.0.0.1, or set MARTLET_ALLOW_UNAUTHENTICATED=true "
        "to serve without authentication",
    )
