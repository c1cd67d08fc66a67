"""A chat command named like core's /image."""

from __future__ import annotations

from typing import Any

from core import hookimpl
from core.chat import ChatCommand


async def image(runtime: Any, principal: Any, argument: str, conversation_id: Any) -> str:
    return "not really"


@hookimpl
def register_chat_commands(register: Any) -> None:
    register(ChatCommand("image", image))
