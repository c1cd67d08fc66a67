"""Fixtures for driving the Lambda handler: a fresh handler module per test (one Lambda
execution environment), configured only through environment variables."""

from __future__ import annotations

import asyncio
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.chat_support import LlamaServer
from tests.conftest import free_port
from tests.deploy.lambda_events import Invoker, load_handler_module, mami
from tests.forge_standin import ForgeStandIn
from tests.plugins.chroma_rag.conftest import ChromaServer


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """``lambda_env(VAR=value, ...)``: the function's environment. Starts from a clean
    slate (no MAMI_* variables), SQLite in tmp_path and auth off unless overridden."""
    # the handler may write MAMI_SIGNING_KEY (from Secrets Manager): restore it afterwards
    monkeypatch.setenv("MAMI_SIGNING_KEY", "")
    for name in list(os.environ):
        if name.startswith("MAMI"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAMI_DATA_DIR", str(tmp_path / "lambda-data"))
    monkeypatch.setenv("MAMI_DATABASE_URL", f"sqlite:///{tmp_path / 'lambda.db'}")
    monkeypatch.setenv("MAMI__CORE__AUTH", "false")

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.fixture
def invoke(lambda_env: Callable[..., None]) -> Iterator[Invoker]:
    """A fresh handler module on its own event loop; the runtime is stopped afterwards."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    invoker = Invoker(load_handler_module())
    try:
        yield invoker
    finally:
        if invoker.module._mangum is not None:
            loop.run_until_complete(invoker.runtime.stop())
        if invoker.module._worker_runtime is not None:
            loop.run_until_complete(invoker.module._worker_runtime.stop())
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture(scope="session")
def seeded_database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A migrated SQLite file holding one API token for ``alice``, made once."""
    folder = tmp_path_factory.mktemp("seed")
    url = f"sqlite:///{folder / 'seed.db'}"
    mami("db", "upgrade", database_url=url, cwd=folder)
    output = mami("token", "create", "--owner", "alice", database_url=url, cwd=folder)
    return folder / "seed.db", output.strip().splitlines()[-1]


@pytest.fixture
def token(lambda_env: Any, tmp_path: Path, seeded_database: tuple[Path, str]) -> str:
    """The function's database is a copy of the seeded one; returns alice's token."""
    seed, token = seeded_database
    shutil.copy(seed, tmp_path / "auth.db")
    lambda_env(MAMI__CORE__AUTH="true", MAMI_DATABASE_URL=f"sqlite:///{tmp_path / 'auth.db'}")
    return token


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """A real OpenAI-compatible model server: ``llama_cpp.server`` with SmolLM2."""
    server = LlamaServer().wait()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A Chroma server (``chroma run``) on loopback."""
    server = ChromaServer(tmp_path_factory.mktemp("lambda-chroma"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def forge() -> Iterator[ForgeStandIn]:
    """The Forge stand-in (the real AUTOMATIC1111 API on loopback)."""
    server = ForgeStandIn("ok").start()
    yield server
    server.stop()


AWS_REGION = "eu-west-1"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """boto3 pointed at moto's server (fresh state), as the function's environment would
    be; returns a session for the operator's side (creating secrets and buckets)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", AWS_REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"))
    yield boto3.session.Session(region_name=AWS_REGION)
