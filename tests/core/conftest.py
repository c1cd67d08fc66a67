"""Fixtures of the core tests: the chat API app with the local model under uvicorn, the
official ``openai`` client pointed at it, runtimes built from a config (started, and
stopped after the test), and the scripted OpenAI-compatible stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from core import migrations
from core.app import create_app
from core.db import is_sqlite
from core.plugins import Candidate
from core.runtime import Runtime
from tests.chat_support import LOCAL, StandIn


@pytest.fixture
def server(make_config: Any, live_server: Any) -> Any:
    return live_server(create_app(make_config(), candidates=[LOCAL]))


@pytest.fixture
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
async def make_runtime(make_config: Any) -> AsyncIterator[Any]:
    runtimes: list[Runtime] = []

    async def build(*candidates: Candidate, database_url: str | None = None,
                    **tables: Any) -> Runtime:
        if database_url:
            tables.setdefault("core", {})["database_url"] = database_url
            if not is_sqlite(database_url):
                await asyncio.to_thread(migrations.upgrade_all, database_url)
        runtime = Runtime(make_config(**tables), list(candidates))
        await runtime.ensure_started()
        runtimes.append(runtime)
        return runtime

    yield build
    for runtime in runtimes:
        await runtime.stop()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn().start()
    yield server
    server.stop()
