"""The page on a server without authentication (``[core] auth = false``): no token is
asked for, and chat works as the local owner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import free_port
from tests.e2e.conftest import server_config
from tests.e2e.pages import ask
from tests.e2e.server import MamiServer
from tests.forge_standin import ForgeStandIn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def open_mami(tmp_path_factory: pytest.TempPathFactory, forge: ForgeStandIn,
              echo_plugin_site: Path) -> Iterator[MamiServer]:
    workdir = tmp_path_factory.mktemp("mami-open")
    config = server_config(workdir / "data", forge.url, llm="context-echo", auth=False)
    server = MamiServer(workdir, config, free_port(), env={"PYTHONPATH": str(echo_plugin_site)})
    yield server.start()
    server.stop()


def test_no_token_is_needed_when_auth_is_off(page: Any, open_mami: MamiServer) -> None:
    assert not open_mami.token  # no first-start token either
    page.goto(open_mami.url)
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    expect(page.locator("#signin")).to_be_hidden()
    expect(page.locator("#sign-out")).to_be_hidden()
    assert ask(page, "Hello?").strip() == "No passages."
    assert page.evaluate("localStorage.getItem('mami.token')") is None
    assert page.problems == []
