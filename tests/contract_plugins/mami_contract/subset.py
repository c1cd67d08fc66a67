"""Implementations that take a subset of their hooks' arguments, as pluggy allows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from core import hookimpl
from core.chat import ChatCommand
from core.protocols import ChatMessage, Delta, GenerationParams

CALLS: list[str] = []


class Parrot:
    """Answers every message with ``squawk``."""

    name = "subset-parrot"
    context_window = 4096

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    async def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta]:
        yield Delta("squawk", finish_reason="stop")


async def hello(runtime: Any, principal: Any, argument: str, conversation_id: Any) -> str:
    return f"hello {argument}".strip()


@hookimpl
def register_llm_providers(register: Any) -> None:
    register(Parrot())


@hookimpl
def register_chat_commands(register: Any) -> None:
    register(ChatCommand("hello", hello, "say hello"))


@hookimpl
def startup() -> None:
    CALLS.append("startup")


@hookimpl
def message_completed(event: Any) -> None:
    CALLS.append(f"message_completed:{event.message_id}")
