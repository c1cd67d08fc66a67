"""The server-side tool loop: the model (a scripted OpenAI-compatible server over a real
socket, through openai-llm) asks for mami's own tools, mami runs them and continues;
parallel calls, a tool that raises, one that hangs past its timeout, the step limit,
the stored steps and their replay, and the WebSocket's tool events."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest

from core import hookimpl
from core.app import create_app
from core.protocols import ChatMessage, Delta, GenerationParams
from tests.chat_support import OPENAI, plugin_object
from tests.scripted_model import Call, Reply, ScriptedModel, last_tool_results


class PlainProvider:
    """An LLM provider that says nothing about tools or JSON output (no ``supports``)."""

    name = "plain"
    context_window = 4096

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    async def stream(self, messages: Sequence[ChatMessage], params: GenerationParams
                     ) -> AsyncIterator[Delta]:
        self.seen = params
        yield Delta("plain answer", "stop")

    async def aclose(self) -> None:
        pass


class ProviderPlugin:
    def __init__(self, provider: Any) -> None:
        self.provider = provider

    @hookimpl
    def register_llm_providers(self, register: Any, runtime: Any) -> None:
        register(self.provider)
