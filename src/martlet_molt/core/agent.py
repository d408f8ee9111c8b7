"""The agent: one run's tool-calling loop, writing everything the model says into the run's
stream log.

The agent never saves anything and never ends the log: the run manager does both, after the
agent returns or raises, so that the reply is saved before readers are told the run ended.
What the agent has produced so far (finished tool rounds, the text of the current round) stays
readable after a failure or cancellation, so partial work is saved too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from martlet_molt.core.local_log import LocalLog
from martlet_molt.core.status import RunStatus
from martlet_molt.core.tool_rounds import round_messages
from martlet_molt.core.tools import ToolOutcome, ToolRegistry
from martlet_molt.providers.base import (
    ChatMessage,
    FinishDelta,
    ModelOptions,
    Provider,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)
from martlet_molt.store.base import NewMessage


@dataclass(slots=True)
class _PendingToolCall:
    """A tool call being assembled from stream fragments."""

    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list[str])

    def joined(self) -> str:
        """The arguments, whole."""
        return "".join(self.arguments)

    def as_openai(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.joined()},
        }


class Agent:
    """Runs one turn of a conversation: model, tools, model, ... until a final answer."""

    def __init__(
        self,
        provider: Provider,
        tools: ToolRegistry | None = None,
        *,
        max_rounds: int = 8,
        options: ModelOptions | None = None,
    ) -> None:
        self.provider = provider
        self.options = options
        self.tools = tools or ToolRegistry()
        self.max_rounds = max_rounds
        self.finished_rounds: list[NewMessage] = []
        self.usage: dict[str, int] = {}
        self.finish_reason: str | None = None
        self._round_start = 0
        self._open_round: tuple[str, list[dict[str, Any]], dict[str, ToolOutcome]] | None = None

    async def stream_into_log(self, history: Sequence[ChatMessage], log: LocalLog) -> None:
        """Stream the reply into `log` (already started), running tools as the model asks."""
        messages = list(history)
        for round_number in range(1, self.max_rounds + 1):
            self._round_start = log.content_length
            offer_tools = len(self.tools) > 0 and round_number < self.max_rounds
            calls = await self._stream_round(messages, log, offer_tools=offer_tools)
            if not calls:
                return
            messages.extend(await self._run_tools(calls, log))
        logger.warning("run {} stopped after {} tool rounds", log.run_id, self.max_rounds)

    async def _stream_round(
        self, messages: list[ChatMessage], log: LocalLog, *, offer_tools: bool
    ) -> list[_PendingToolCall]:
        calls: dict[int, _PendingToolCall] = {}
        specs = self.tools.specs() if offer_tools else ()
        async for delta in self.provider.stream(messages, specs, self.options):
            if isinstance(delta, TextDelta):
                first = log.first_token_at is None
                log.put_sync(delta.text)
                if first:
                    # Let the readers send the first token now: the rest of a reply that
                    # arrived in the same read would otherwise be relayed before they run.
                    await asyncio.sleep(0)
            elif isinstance(delta, ToolCallDelta):
                call = calls.setdefault(delta.index, _PendingToolCall())
                if delta.call_id:
                    call.call_id = delta.call_id
                if delta.name:
                    call.name += delta.name
                call.arguments.append(delta.arguments)
            elif isinstance(delta, UsageDelta):
                self._add_usage(delta)
            elif isinstance(delta, FinishDelta):  # pyright: ignore[reportUnnecessaryIsInstance]
                self.finish_reason = delta.reason
        return [calls[index] for index in sorted(calls)]

    async def _run_tools(self, calls: list[_PendingToolCall], log: LocalLog) -> list[ChatMessage]:
        """Run one round's calls concurrently; each result goes into the log as it comes."""
        text = self.round_text(log)
        tool_calls = [call.as_openai() for call in calls]
        results: dict[str, ToolOutcome] = {}
        self._open_round = (text, tool_calls, results)
        for call in calls:
            log.add_tool_call(call_id=call.call_id, name=call.name, arguments=call.joined())
            logger.info("run {} calls tool {}", log.run_id, call.name)

        async def run(call: _PendingToolCall) -> None:
            outcome = await self.tools.call(call.name, call.joined())
            results[call.call_id] = outcome
            log.add_tool_result(
                call_id=call.call_id,
                name=call.name,
                content=outcome.content,
                failed=outcome.failed,
                duration_ms=round(outcome.seconds * 1000),
            )

        await asyncio.gather(*(run(call) for call in calls))
        self._open_round = None
        self.finished_rounds.extend(round_messages(log.run_id, text, tool_calls, results))
        context: list[ChatMessage] = [
            {"role": "assistant", "content": text or None, "tool_calls": tool_calls}
        ]
        for call in calls:
            context.append(
                {
                    "role": "tool",
                    "tool_call_id": call.call_id,
                    "content": results[call.call_id].content,
                }
            )
        return context

    def _add_usage(self, delta: UsageDelta) -> None:
        for key, value in (
            ("prompt_tokens", delta.prompt_tokens),
            ("completion_tokens", delta.completion_tokens),
            ("total_tokens", delta.total_tokens),
        ):
            self.usage[key] = self.usage.get(key, 0) + value

    def round_text(self, log: LocalLog) -> str:
        """The text of the round under way (the final answer once the loop is done)."""
        return log.full_content[self._round_start :]

    def messages_to_save(self, log: LocalLog, status: RunStatus) -> list[NewMessage]:
        """Everything this run adds to the session: finished tool rounds, a round cut short
        (its calls, with what returned so far), then the reply."""
        if self._open_round is not None:
            text, tool_calls, results = self._open_round
            cut = round_messages(log.run_id, text, tool_calls, results)
            reply = NewMessage("assistant", "", status=status, run_id=log.run_id)
            return [*self.finished_rounds, *cut, reply]
        reply = NewMessage(
            "assistant",
            log.text_from(self._round_start),
            status=status,
            run_id=log.run_id,
        )
        return [*self.finished_rounds, reply]
