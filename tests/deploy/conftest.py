"""Fixtures for driving the Lambda handler: a fresh handler module per test (one Lambda
execution environment), configured only through environment variables."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy.lambda_events import Invoker, load_handler_module


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """``lambda_env(VAR=value, ...)``: the function's environment. Starts from a clean
    slate (no MAMI_* variables), SQLite in tmp_path and auth off unless overridden."""
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
        asyncio.set_event_loop(None)
        loop.close()
