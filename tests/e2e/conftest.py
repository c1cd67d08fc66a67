"""Fixtures for the browser tests: the stand-in Forge, ``mami serve`` subprocesses and
Debian's Chromium driven by Playwright (never ``playwright install``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.e2e.server import MamiServer
from tests.forge_standin import ForgeStandIn

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "output" / "screenshots"


def server_config(data_dir: Path, forge_url: str, llm: str = "", auth: bool = True) -> str:
    """plugins.toml for a test server: auth on (unless ``auth`` is false), the local
    model with a fixed seed (or the model named ``llm``), replies of at most 96 tokens,
    the stand-in Forge with short timeouts, WebSocket messages of at most 4000 bytes."""
    return f"""
[core]
data_dir = "{data_dir}"
llm = "{llm}"
auth = {str(auth).lower()}

[server]
host = "127.0.0.1"

[budget]
reply_tokens = 96

[plugins.local-llm]
seed = 7
n_threads = 2

[plugins.forge-image]
url = "{forge_url}"
connect_timeout = 1.0
read_timeout = 20.0
deadline = 30.0
attempts = 1
progress_interval = 0.2

[plugins.token-ws-auth]
max_message_bytes = 4000
"""


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Chromium for the e2e package only: Playwright's sync API marks an event loop as
    running in this thread while it lives, which would break later asyncio tests."""
    if not Path(CHROMIUM).exists():
        message = "Debian's chromium is not installed (see .ci/apt-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def forge() -> Iterator[ForgeStandIn]:
    standin = ForgeStandIn(mode="ok", delay=1.5).start()
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def mami(tmp_path_factory: pytest.TempPathFactory, forge: ForgeStandIn) -> Iterator[MamiServer]:
    """``mami serve`` with the local model and the stand-in Forge, signed-in token known."""
    workdir = tmp_path_factory.mktemp("mami-e2e")
    server = MamiServer(workdir, server_config(workdir / "data", forge.url), free_port())
    server.start()
    assert server.token, f"no first-start token URL printed:\n{server.output}"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def echo_mami(tmp_path_factory: pytest.TempPathFactory, forge: ForgeStandIn,
              echo_plugin_site: Path) -> Iterator[MamiServer]:
    """``mami serve`` whose model is ``context-echo``: replies are known in advance."""
    workdir = tmp_path_factory.mktemp("mami-echo")
    server = MamiServer(workdir, server_config(workdir / "data", forge.url, llm="context-echo"),
                        free_port(), env={"PYTHONPATH": str(echo_plugin_site)})
    server.start()
    assert server.token, f"no first-start token URL printed:\n{server.output}"
    yield server
    server.stop()


@pytest.fixture(scope="session")
def echo_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``context-echo`` model plugin (tests/e2e/echo_plugin), installed with pip
    into a private directory that only the servers that want it put on their path."""
    target = tmp_path_factory.mktemp("echo-site")
    build = tmp_path_factory.mktemp("echo-build") / "src"
    shutil.copytree(Path(__file__).parent / "echo_plugin", build)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(build)],
        check=True,
    )
    return target


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (own storage) at desktop size; console errors and CSP
    violations are collected in ``page.problems``."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    tab.problems = problems
    yield tab
    context.close()


def screenshot(page: Any, name: str) -> None:
    """Save a screenshot for people to look at (tests/output/ is not committed)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
