"""Fixtures for chroma-rag: a real ``chroma run`` server on loopback and runtimes that
load only this plugin (plus, for API tests, a header authenticator)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.plugins import Candidate, builtin_candidates
from core.runtime import Runtime
from tests.chat_support import AuthPlugin, HeaderAuthenticator
from tests.conftest import free_port


class ChromaServer:
    """``chroma run`` on 127.0.0.1 with its data in a temporary directory."""

    def __init__(self, path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [shutil.which("chroma") or "chroma", "run", "--path", str(path),
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("chroma server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path_factory.mktemp("chroma-server"))
    yield server
    server.stop()


def rag_candidates(*extra: Candidate) -> list[Candidate]:
    """Only the chroma-rag built-in (other plugins are not under test here)."""
    return [c for c in builtin_candidates() if c.name == "chroma-rag"] + list(extra)


HEADER_AUTH = Candidate("header-auth", "tests", "test", True,
                        lambda: AuthPlugin(HeaderAuthenticator()))  # type: ignore[arg-type,return-value]


@pytest.fixture(params=["embedded", "http"])
def client_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rag_settings(client_mode: str, request: pytest.FixtureRequest,
                 tmp_path: Path) -> dict[str, Any]:
    """plugins.toml table for chroma-rag in the requested client mode; each test gets
    its own collection prefix so runs sharing the server never meet."""
    table: dict[str, Any] = {
        "collection_prefix": f"t{abs(hash(str(tmp_path))) % 10**12}",
        "scopes": ["default", "work", "notes"],
        "global_writers": ["ops"],
    }
    if client_mode == "http":
        table["chroma_url"] = request.getfixturevalue("chroma_server").url
    return table


@pytest.fixture
async def rag_runtime(make_config: Any, rag_settings: dict[str, Any]) -> AsyncIterator[Runtime]:
    """A started runtime (SQLite) with chroma-rag in the requested client mode."""
    runtime = Runtime(make_config(plugins={"chroma-rag": rag_settings}), rag_candidates())
    await runtime.ensure_started()
    yield runtime
    await runtime.stop()
