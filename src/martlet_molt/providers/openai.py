"""Any OpenAI-compatible chat model (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM) through the
official SDK, streamed as typed deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolUnionParam

from martlet_molt.errors import ProviderError
from martlet_molt.providers.base import (
    ChatMessage,
    Delta,
    FinishDelta,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageDelta,
)

# Local servers accept any key; the SDK insists on one.
PLACEHOLDER_API_KEY = "not-needed"


class OpenAIProvider:
    """Streams chat completions; closing the stream closes the upstream HTTP response."""

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        label: str = "openai",
        timeout: float = 600.0,
        idle_timeout: float = 120.0,
        max_retries: int = 2,
        max_tokens: int | None = None,
    ) -> None:
        self._model = model
        self._label = label
        self._max_tokens = max_tokens
        # The SDK retries 429, 5xx and connection errors with backoff, honouring Retry-After,
        # before a response starts; the read timeout bounds silence between any two bytes.
        self._client = AsyncOpenAI(
            api_key=api_key or PLACEHOLDER_API_KEY,
            base_url=base_url,
            timeout=openai.Timeout(timeout, read=idle_timeout),
            max_retries=max_retries,
        )

    @property
    def name(self) -> str:
        """The provider's kind and where it points."""
        return f"{self._label} ({self._client.base_url})"

    @property
    def model(self) -> str:
        """The model every request asks for."""
        return self._model

    async def stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[Delta]:
        """Stream one completion; errors from the SDK become `ProviderError`."""
        try:
            upstream = await self._client.chat.completions.create(
                model=self._model,
                messages=cast("list[ChatCompletionMessageParam]", list(messages)),
                stream=True,
                stream_options={"include_usage": True},
                tools=cast("list[ChatCompletionToolUnionParam]", list(tools))
                if tools
                else openai.omit,
                max_tokens=self._max_tokens if self._max_tokens is not None else openai.omit,
            )
        except openai.APIError as exc:
            raise ProviderError(_describe(exc)) from exc
        try:
            async for chunk in upstream:
                if chunk.usage is not None:
                    usage = chunk.usage
                    yield UsageDelta(
                        usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
                    )
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        yield TextDelta(delta.content)
                    for call in delta.tool_calls or ():
                        function = call.function
                        yield ToolCallDelta(
                            index=call.index,
                            call_id=call.id,
                            name=function.name if function else None,
                            arguments=(function.arguments or "") if function else "",
                        )
                    if choice.finish_reason:
                        yield FinishDelta(choice.finish_reason)
        except openai.APITimeoutError as exc:
            raise ProviderError("upstream went silent for longer than the idle timeout") from exc
        except openai.APIConnectionError as exc:
            raise ProviderError("upstream connection dropped mid-stream") from exc
        except openai.APIError as exc:
            raise ProviderError(_describe(exc)) from exc
        except ValueError as exc:  # the SDK's JSON decoding of a chunk
            raise ProviderError(f"upstream sent a malformed chunk: {exc}") from exc
        except Exception as exc:
            raise ProviderError(_describe_transport(exc)) from exc
        finally:
            await upstream.close()

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()


def _describe_transport(exc: Exception) -> str:
    """The SDK lets its HTTP client's errors through mid-stream; name the common ones."""
    kind = type(exc).__name__
    if kind == "ReadTimeout":
        return "upstream went silent for longer than the idle timeout"
    if kind in ("RemoteProtocolError", "ReadError", "ConnectError", "NetworkError"):
        return f"upstream connection dropped mid-stream ({kind})"
    return f"upstream stream failed: {kind}: {exc}"


def _describe(exc: openai.APIError) -> str:
    """A one-line reason a reader can act on."""
    if isinstance(exc, openai.APIStatusError):
        return f"upstream returned HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return "upstream timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"could not reach the upstream: {exc.message}"
    return f"upstream error: {exc.message}"
