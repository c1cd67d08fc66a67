"""Fixtures for driving the Lambda handler: a fresh handler module per test (one Lambda
execution environment), configured only through environment variables."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from lambda_events import LambdaResponse, make_event, read_response

HANDLER_PATH = Path(__file__).resolve().parents[2] / "deploy" / "lambda" / "handler.py"


def load_handler_module() -> ModuleType:
    """Import ``deploy/lambda/handler.py`` afresh, as a new execution environment would."""
    spec = importlib.util.spec_from_file_location("mami_lambda_handler", HANDLER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


class Invoker:
    """Calls the handler the way the Lambda runtime does: ``handler(event, context)``."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def __call__(self, shape: str, method: str, path: str, **kwargs: Any) -> LambdaResponse:
        raw = self.module.handler(make_event(shape, method, path, **kwargs), None)
        return read_response(raw)

    @property
    def runtime(self) -> Any:
        return self.module._mangum.app.state.runtime


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
