"""The page shows who is signed in, asks before a ``?token=`` link switches accounts
(login CSRF), and Sign out leaves nothing in the browser's storage."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.pages import sign_in
from tests.e2e.server import MamiServer

pytestmark = pytest.mark.slow


def token_for(server: MamiServer, owner: str) -> str:
    """A token of ``owner`` made with ``mami token create`` against the server's database."""
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", "--config", str(server.config_path), "token",
         "create", "--owner", owner, "--name", f"{owner}-laptop"],
        cwd=server.workdir, env=server.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = re.search(r"mami_[0-9a-f]{16}_[A-Za-z0-9_-]+", result.stdout)
    assert found, result.stdout
    return found.group(0)


def test_api_me_names_the_owner_and_token(echo_mami: MamiServer) -> None:
    mallory = token_for(echo_mami, "mallory")
    me = httpx.get(f"{echo_mami.url}/api/me", headers={"Authorization": f"Bearer {mallory}"})
    assert me.status_code == 200, me.text
    assert me.json() == {"owner": "mallory", "token_name": "mallory-laptop",
                         "expires_at": None, "auth": True, "default_model": "context-echo"}
    assert httpx.get(f"{echo_mami.url}/api/me").status_code == 401


def test_a_link_to_another_account_asks_first(page: Any, echo_mami: MamiServer) -> None:
    mallory = token_for(echo_mami, "mallory")
    sign_in(page, echo_mami)
    expect(page.locator("#whoami")).to_have_text("Signed in as admin")
    page.locator("#composer-input").fill("my private draft")
    asked: list[str] = []

    def answer(accept: bool) -> Any:
        def handle(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()
        return handle

    page.once("dialog", answer(False))
    page.goto(f"{echo_mami.url}/?token={mallory}")
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    assert len(asked) == 1 and '"mallory"' in asked[0] and '"admin"' in asked[0], asked
    expect(page.locator("#whoami")).to_have_text("Signed in as admin")
    assert page.evaluate("localStorage.getItem('mami.token')") == echo_mami.token
    assert "token" not in page.url

    page.once("dialog", answer(True))
    page.goto(f"{echo_mami.url}/?token={mallory}")
    expect(page.locator("#whoami")).to_have_text("Signed in as mallory", timeout=30_000)
    assert len(asked) == 2
    assert page.evaluate("localStorage.getItem('mami.token')") == mallory
    expect(page.locator("#composer-input")).to_have_value("")  # admin's draft is not shown

    page.on("dialog", answer(True))
    page.goto(f"{echo_mami.url}/?token={mallory}")  # the stored token again: no question
    expect(page.locator("#whoami")).to_have_text("Signed in as mallory", timeout=30_000)
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    assert len(asked) == 2
    assert page.problems == []


def test_sign_out_clears_everything_the_page_stored(page: Any, echo_mami: MamiServer) -> None:
    sign_in(page, echo_mami)
    page.locator("#composer-input").fill("a draft")
    page.evaluate("localStorage.setItem('mami.conversation', 'c1')")
    assert page.evaluate("Object.keys(localStorage).length") >= 2
    page.locator("#sign-out").click()
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#whoami")).to_be_hidden()
    assert page.evaluate("Object.keys(localStorage)") == []
    page.reload()
    expect(page.locator("#signin")).to_be_visible(timeout=30_000)
    assert page.evaluate("Object.keys(localStorage)") == []
