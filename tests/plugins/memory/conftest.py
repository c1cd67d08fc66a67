"""Fixtures for the memory plugin: runtimes with the real store (SQLite or PostgreSQL,
embedded Chroma or ``chroma run``) and a scripted chat model, the LLM being the one
collaborator written here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from sqlmodel import col, func, select

from core import hookimpl, migrations
from core.db import is_sqlite
from core.errors import StreamInterrupted
from core.models import EventReceipt
from core.plugins import Candidate, builtin_candidates
from core.protocols import ChatMessage, Delta, GenerationParams
from core.runtime import Runtime
from plugins.memory.extract import EXTRACTION_PROMPT
from plugins.memory.models import MemoryDecisionRecord, MemoryRecord
from plugins.memory.store import ChromaMemoryStore
from tests.chat_support import AuthPlugin, HeaderAuthenticator


class ScriptedLLM:
    """Streams ``reply`` word by word. ``cut_after`` words in, the stream breaks
    (``StreamInterrupted``); ``extraction`` is its answer to the memory extraction prompt.
    ``gate``, when set, is awaited before each word (to interrupt a reply mid-stream)."""

    name = "scripted"
    context_window = 4096

    def __init__(self) -> None:
        self.reply = "Noted, I will keep that in mind."
        self.cut_after: int | None = None
        self.extraction = '{"facts": []}'
        self.extraction_calls = 0
        self.extraction_prompts: list[str] = []
        self.gate: asyncio.Event | None = None

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    async def stream(self, messages: Sequence[ChatMessage], params: GenerationParams
                     ) -> AsyncIterator[Delta]:
        if messages and messages[0].content == EXTRACTION_PROMPT:
            self.extraction_calls += 1
            self.extraction_prompts.append(messages[-1].content)
            yield Delta(self.extraction, "stop")
            return
        sent: list[str] = []
        for i, word in enumerate(self.reply.split(" ")):
            if self.cut_after is not None and i == self.cut_after:
                raise StreamInterrupted("the model went away", "".join(sent))
            if self.gate is not None:
                await self.gate.wait()
            piece = word if i == 0 else " " + word
            sent.append(piece)
            yield Delta(piece)
            await asyncio.sleep(0)
        yield Delta("", "stop")

    async def aclose(self) -> None:
        return None


class ScriptedPlugin:
    def __init__(self, llm: ScriptedLLM) -> None:
        self.llm = llm

    @hookimpl
    def register_llm_providers(self, register: Callable[[Any], None], runtime: Any) -> None:
        register(self.llm)


def candidates(llm: ScriptedLLM | None = None, auth: bool = False,
               memory: bool = True) -> list[Candidate]:
    """The memory built-in (the real one, from plugins.BUILTINS) plus test plugins."""
    found = [c for c in builtin_candidates() if c.name == "memory" and memory]
    if llm is not None:
        plugin = ScriptedPlugin(llm)
        found.append(Candidate("scripted-llm", "tests", "test", True, lambda: plugin))  # type: ignore[arg-type,return-value]
    if auth:
        found.append(Candidate("header-auth", "tests", "test", True,
                               lambda: AuthPlugin(HeaderAuthenticator())))  # type: ignore[arg-type,return-value]
    return found


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM()


@pytest.fixture
async def make_runtime(make_config: Any) -> AsyncIterator[Any]:
    """``await make_runtime(database_url=..., memory={...}, llm=..., auth=...)``: a
    started runtime; PostgreSQL databases are migrated first."""
    runtimes: list[Runtime] = []

    async def build(database_url: str | None = None, memory: dict[str, Any] | None = None,
                    llm: ScriptedLLM | None = None, auth: bool = False,
                    enabled: bool = True, **tables: Any) -> Runtime:
        core = tables.setdefault("core", {})
        if database_url:
            core["database_url"] = database_url
            if not is_sqlite(database_url):
                await asyncio.to_thread(migrations.upgrade_all, database_url)
        core["auth"] = auth
        tables["plugins"] = {"memory": memory or {}}
        runtime = Runtime(make_config(**tables), candidates(llm, auth, enabled))
        await runtime.ensure_started()
        runtimes.append(runtime)
        return runtime

    yield build
    for runtime in runtimes:
        await runtime.stop()


def store_of(runtime: Runtime) -> ChromaMemoryStore:
    store = runtime.require("memory")
    assert isinstance(store, ChromaMemoryStore)
    return store


async def counts(runtime: Runtime) -> tuple[int, int, int]:
    """(memories, decisions, memory receipts) in the database."""
    async with runtime.db.session() as session:
        memories = (await session.exec(select(func.count()).select_from(MemoryRecord))).one()
        decisions = (await session.exec(
            select(func.count()).select_from(MemoryDecisionRecord))).one()
        receipts = (await session.exec(select(func.count()).select_from(EventReceipt).where(
            col(EventReceipt.consumer) == "memory"))).one()
    return int(memories), int(decisions), int(receipts)
