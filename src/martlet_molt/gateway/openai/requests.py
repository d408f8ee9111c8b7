"""What OpenAI's SDKs send: the bodies of `POST /v1/responses` and `POST /v1/chat/completions`,
checked and turned into a `RunSpec`.

A field the gateway does not implement gets a 400 naming it, unless its value changes nothing
(`tools: []`, `n: 1`, `tool_choice: "auto"`, ...): a request is never run with part of its
meaning silently dropped. Message content is text: a string, or parts of type `input_text` /
`output_text` (Responses) or `text` (Chat Completions), joined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from martlet_molt.errors import InvalidRequest
from martlet_molt.providers.base import ChatMessage

# A field whose value here means what the gateway does anyway is accepted; any other value
# (or any field not listed) is refused by name.
_HARMLESS: dict[str, tuple[object, ...]] = {
    "tools": ([],),
    "tool_choice": ("auto", "none"),
    "parallel_tool_calls": (True, False),
    "truncation": ("disabled",),
    "include": ([],),
    "n": (1,),
    "service_tier": ("auto", "default"),
    "text": ({"format": {"type": "text"}},),
    "response_format": ({"type": "text"},),
    "logprobs": (False,),
    "stream_options": (None,),
}
# Fields that only identify or label the caller: kept out of the run, never changing a reply.
_IGNORED = frozenset({"user", "safety_identifier", "prompt_cache_key", "store"})


def refuse_unsupported(extra: Mapping[str, Any] | None) -> None:
    """Raise a 400 naming the first field the gateway cannot honour as asked."""
    for name, value in (extra or {}).items():
        if name in _IGNORED:
            continue
        if name in _HARMLESS and value in _HARMLESS[name]:
            continue
        shown = str(value)[:60]
        raise InvalidRequest(
            f"`{name}` is not supported by this gateway (got {shown}); "
            "see the table of supported features in docs/api.md",
            param=name,
        )


def check_sizes(messages: Sequence[ChatMessage], limit: int, param: str) -> None:
    """Refuse a message longer than `MARTLET_MAX_MESSAGE_CHARS`, as the native API does."""
    for message in messages:
        length = len(message["content"])
        if length > limit:
            raise InvalidRequest(
                f"a message is {length} characters; the limit is {limit}", param=param
            )


class TextPart(BaseModel):
    """A text content part."""

    model_config = ConfigDict(extra="allow")

    type: Literal["input_text", "output_text", "text"]
    text: str


class InputMessage(BaseModel):
    """One message of a Responses `input` list (or of Chat Completions' `messages`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_chat(self) -> ChatMessage:
        """The message in the upstream's chat shape (`developer` is the system's role there)."""
        content = self.content
        if content is None:
            if self.role != "assistant":
                raise InvalidRequest(f"a `{self.role}` message needs content", param="content")
            content = ""
        if not isinstance(content, str):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        message: ChatMessage = {"role": role, "content": content}
        if self.name:
            message["name"] = self.name
        return message


class ResponsesCreate(BaseModel):
    """`POST /v1/responses`."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[InputMessage]
    instructions: str | None = None
    previous_response_id: str | None = None
    background: bool = False
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    store: bool = True

    def check(self) -> None:
        """Refuse what cannot be honoured (see the module's docstring)."""
        refuse_unsupported(self.model_extra)
        if not self.store:
            raise InvalidRequest(
                "`store: false` is not supported: every response is a stored, resumable run",
                param="store",
            )
        if isinstance(self.input, list) and not self.input:
            raise InvalidRequest("`input` is empty", param="input")

    def messages(self) -> list[ChatMessage]:
        """The new turns this response adds to its conversation."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        return [message.as_chat() for message in self.input]

    def echo(self, model: str, input_count: int) -> dict[str, Any]:
        """What the Response object echoes, saved with the run."""
        return {
            "api": "responses",
            "model": model,
            "instructions": self.instructions,
            "previous_response_id": self.previous_response_id,
            "background": self.background,
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "metadata": self.metadata or {},
            "input_count": input_count,
        }


class StreamOptions(BaseModel):
    """`stream_options` of a chat completion."""

    include_usage: bool = False


class ChatCompletionsCreate(BaseModel):
    """`POST /v1/chat/completions`."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[InputMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)

    def check(self) -> None:
        """Refuse what cannot be honoured (see the module's docstring)."""
        refuse_unsupported(self.model_extra)

    def chat_messages(self) -> Sequence[ChatMessage]:
        """The whole conversation, in the upstream's chat shape."""
        return [message.as_chat() for message in self.messages]

    @property
    def token_limit(self) -> int | None:
        """`max_completion_tokens`, or the older `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        """Whether the stream ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage
