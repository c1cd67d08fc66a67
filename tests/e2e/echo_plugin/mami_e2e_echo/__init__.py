"""Deterministic chat models for the browser tests.

context-echo answers with the document passages mami put into its system prompt, so a
test can see that an uploaded document reached the model, whatever a real model would
say. mirror answers with the user's last message, streamed in small pieces (so a test
can send Markdown and see it rendered), and ``settings?`` with the system prompt and
sampling settings it was given (so a test can see that they reach the model).

With ``MAMI_E2E_SLOW_DELAY`` set (seconds) it also registers ``slow-count``, which
answers ``w1 w2 ... w<MAMI_E2E_SLOW_WORDS>`` one word per delay: a reply long enough
to kill the server in the middle of it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from core import hookimpl
from core.protocols import ChatMessage, Delta, GenerationParams

MARKER = "Passages from the user's documents that may help:"


class ContextEcho:
    name = "context-echo"
    context_window = 4096

    def count_tokens(self, text: str) -> int:
        return len(text) // 2 + 1  # over-estimates: never overfills the window

    async def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta]:
        system = messages[0].content if messages and messages[0].role == "system" else ""
        _, found, passages = system.partition(MARKER)
        answer = f"From your documents: {passages.strip()}" if found else "No passages."
        for word in answer.split(" "):
            yield Delta(word + " ")
        yield Delta("", finish_reason="stop")

    async def aclose(self) -> None:
        return None


class Mirror:
    name = "mirror"
    context_window = 8192
    piece = 7

    def count_tokens(self, text: str) -> int:
        return len(text) // 2 + 1

    async def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta]:
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        if last.strip() == "settings?":
            system = messages[0].content if messages and messages[0].role == "system" else ""
            first_line = system.splitlines()[0] if system else ""
            answer = (f"system: {first_line}\n\ntemperature: {params.temperature}\n\n"
                      f"max_tokens: {params.max_tokens}")
        else:
            answer = last
        for start in range(0, len(answer), self.piece):
            yield Delta(answer[start:start + self.piece])
        yield Delta("", finish_reason="stop")

    async def aclose(self) -> None:
        return None


class SlowCount:
    name = "slow-count"
    context_window = 4096

    def __init__(self, delay: float, words: int) -> None:
        self.delay, self.words = delay, words

    def count_tokens(self, text: str) -> int:
        return len(text) // 2 + 1

    async def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta]:
        for number in range(1, self.words + 1):
            await asyncio.sleep(self.delay)
            yield Delta(f"w{number} ")
        yield Delta("", finish_reason="stop")

    async def aclose(self) -> None:
        return None


@hookimpl
def register_llm_providers(register: Callable[[Any], None], runtime: Any) -> None:
    register(ContextEcho())
    register(Mirror())
    delay = os.environ.get("MAMI_E2E_SLOW_DELAY")
    if delay:
        register(SlowCount(float(delay), int(os.environ.get("MAMI_E2E_SLOW_WORDS", "200"))))
