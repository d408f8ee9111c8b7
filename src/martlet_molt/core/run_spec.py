"""What a run is asked to do: one request, whichever API it came through.

The native API asks with one message; OpenAI's Responses API with an input (a string or
messages), instructions and a previous response; Chat Completions with a whole conversation.
Each becomes a `RunSpec`, and the run manager starts every run from one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from martlet_molt.providers.base import ChatMessage, ModelOptions


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One request for a run.

    `messages` are the new turns this run saves before answering: the user's message, or a
    whole conversation that starts a new session. `instructions` replace the gateway's system
    prompt for this run only (an empty string: no system prompt at all).
    """

    messages: Sequence[ChatMessage]
    principal: str
    session_id: str | None = None
    client_request_id: str | None = None
    instructions: str | None = None
    options: ModelOptions = field(default_factory=ModelOptions)
    request: Mapping[str, Any] | None = None
    """What the request asked, as the API that took it will echo it (saved with the run)."""

    @classmethod
    def of_message(
        cls,
        message: str,
        *,
        principal: str,
        session_id: str | None = None,
        client_request_id: str | None = None,
    ) -> RunSpec:
        """The native API's request: one user message, in a new or an existing session."""
        return cls(
            messages=({"role": "user", "content": message},),
            principal=principal,
            session_id=session_id,
            client_request_id=client_request_id,
        )
