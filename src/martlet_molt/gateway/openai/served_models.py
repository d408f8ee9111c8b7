"""The models the OpenAI-compatible API serves: the provider's own model, and the names
`MARTLET_MODEL_ALIASES` maps onto upstream models (so that `gpt-4o-mini` in existing code can
mean the local model, if the operator says so)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from martlet_molt.errors import ModelNotFound

OWNER = "martlet"


@dataclass(frozen=True, slots=True)
class ServedModels:
    """Served names, each with the upstream's name for it."""

    default: str
    aliases: Mapping[str, str]

    def names(self) -> list[str]:
        """Every served name, the provider's own first."""
        return list(dict.fromkeys([self.default, *self.aliases]))

    def upstream_name(self, served: str) -> str | None:
        """The upstream's name for a served one (None: the provider's default); raises
        `ModelNotFound` (OpenAI's 404) for a name the gateway does not serve."""
        if served in self.aliases:
            return self.aliases[served]
        if served == self.default:
            return None
        raise ModelNotFound(
            f"The model `{served}` does not exist or you do not have access to it; "
            f"this gateway serves: {', '.join(self.names())}",
            param="model",
        )

    def listing(self, created: int) -> dict[str, Any]:
        """`GET /v1/models`."""
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": created, "owned_by": OWNER}
                for name in self.names()
            ],
        }
