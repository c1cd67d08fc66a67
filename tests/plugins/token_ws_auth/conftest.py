"""Fixtures of the token-ws-auth tests (see ws_auth_harness)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.plugins.token_ws_auth.ws_auth_harness import (
    ALL_SECRETS,
    CAPTURE,
    SIGNING_KEY,
    AuthServer,
    start_server,
)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_the_log() -> Iterator[None]:
    """After all token-ws-auth tests: no token or ticket they used was ever logged."""
    yield
    leaked = [secret[:12] for secret in ALL_SECRETS if secret in CAPTURE.text]
    assert not leaked, f"secrets in the log: {leaked}"


@pytest.fixture(scope="session", autouse=True)
def signing_key() -> Iterator[str]:
    old = os.environ.get("MAMI_SIGNING_KEY")
    os.environ["MAMI_SIGNING_KEY"] = SIGNING_KEY
    yield SIGNING_KEY
    if old is None:
        os.environ.pop("MAMI_SIGNING_KEY", None)
    else:
        os.environ["MAMI_SIGNING_KEY"] = old


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """One server for a test module, on SQLite; failed-attempt limiting is loose."""
    tmp = tmp_path_factory.mktemp("auth")
    server, serving = start_server(tmp, f"sqlite:///{tmp / 'mami.db'}")
    yield server
    serving.stop()


@pytest.fixture
async def http(auth_server: AuthServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client:
        yield client
