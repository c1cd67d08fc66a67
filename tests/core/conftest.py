"""Fixtures of the chat API tests: the app with the local model under uvicorn, and the
official ``openai`` client pointed at it."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from core.app import create_app
from tests.chat_support import LOCAL


@pytest.fixture
def server(make_config: Any, live_server: Any) -> Any:
    return live_server(create_app(make_config(), candidates=[LOCAL]))


@pytest.fixture
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
