"""What a provider yields while a model streams: typed deltas, not raw chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ChatMessage = dict[str, Any]
ToolSpec = dict[str, Any]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call; fragments with the same `index` make one call."""

    index: int
    call_id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """What the upstream says the request cost."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class FinishDelta:
    """Why the model stopped (`stop`, `tool_calls`, `length`, ...)."""

    reason: str


Delta = TextDelta | ToolCallDelta | UsageDelta | FinishDelta


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Per-request options the provider honours; None leaves the provider's own default."""

    model: str | None = None
    """The upstream's name for the model (after the gateway's served-name mapping)."""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None


class Provider(Protocol):
    """A streaming chat model. Closing the iterator must close the upstream request: that is
    what stops token spend when a run is cancelled."""

    @property
    def name(self) -> str:
        """A short name for logs and health output."""
        ...

    @property
    def model(self) -> str:
        """The model that answers."""
        ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        options: ModelOptions | None = None,
    ) -> AsyncIterator[Delta]:
        """Stream one completion, honouring the request's `options` where given."""
        ...

    async def release_idle_connections(self) -> None:
        """Close the connections to the model that no request is using (after a burst, so
        that their buffers go back to the system); the next request opens one again."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP client."""
        ...
