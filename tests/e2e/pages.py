"""Steps the browser tests share."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.e2e.server import MamiServer

REPLY_TIMEOUT = 90_000  # ms; the shared machine may be busy, the model is small


def sign_in(page: Any, server: MamiServer) -> None:
    page.goto(server.token_url)
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)


def replies(page: Any) -> Any:
    return page.locator("#messages li[data-role=assistant]")


def send(page: Any, text: str) -> Any:
    """Type ``text``, press Enter and return the new reply's bubble (still streaming)."""
    before = replies(page).count()
    page.fill("#composer-input", text)
    page.keyboard.press("Enter")
    reply = replies(page).nth(before)
    expect(reply).to_be_visible(timeout=REPLY_TIMEOUT)
    return reply


def finished(reply: Any) -> str:
    """Wait until ``reply`` has ended (it then carries ``data-status``); its text."""
    expect(reply).to_have_attribute("data-status", re.compile(r"\w+"), timeout=REPLY_TIMEOUT)
    return str(reply.locator(".text").text_content())


def stored_messages(server: MamiServer, conversation_id: str) -> list[dict[str, Any]]:
    with server.api() as client:
        response = client.get(f"/api/conversations/{conversation_id}/messages")
    response.raise_for_status()
    return list(response.json())


def current_conversation(page: Any) -> str:
    return str(page.evaluate("localStorage.getItem('mami.conversation')"))


def ask(page: Any, question: str) -> str:
    """Send ``question`` and return the finished reply's text."""
    return finished(send(page, question))
