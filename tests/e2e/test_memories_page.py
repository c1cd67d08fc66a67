"""Memories in the page: what mami remembered after "remember that ..." is listed and
can be deleted; deleting one that is already gone says so."""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot
from tests.e2e.pages import ask, sign_in
from tests.e2e.server import MamiServer

pytestmark = pytest.mark.slow


def memories(server: MamiServer) -> list[dict[str, Any]]:
    with server.api() as client:
        response = client.get("/api/memories")
    response.raise_for_status()
    return list(response.json()["data"])


def wait_for_memories(server: MamiServer, count: int,
                      timeout: float = 60.0) -> list[dict[str, Any]]:
    """Memories are written after the reply's completion event: poll the API."""
    deadline = time.monotonic() + timeout
    while True:
        found = memories(server)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} memories, found {found}")
        time.sleep(0.2)


def test_see_and_delete_memories(page: Any, echo_mami: MamiServer) -> None:
    sign_in(page, echo_mami)
    ask(page, "Remember that my favourite colour is teal.")
    ask(page, "Remember that my cat is called Pamuk.")
    found = wait_for_memories(echo_mami, 2)
    by_text = {m["text"]: m["id"] for m in found}
    teal = next(t for t in by_text if "teal" in t)
    cat = next(t for t in by_text if "Pamuk" in t)

    page.click("#memories-panel summary")
    items = page.locator("#memories li.item")
    expect(items).to_have_count(2)
    expect(page.locator("#memories")).to_contain_text(teal)
    screenshot(page, "15-memories")

    page.get_by_role("button", name=f"Delete memory: {teal}").click()
    expect(items).to_have_count(1)
    expect(page.locator("#memories")).not_to_contain_text("teal")
    assert [m["text"] for m in memories(echo_mami)] == [cat]

    with echo_mami.api() as client:  # gone behind the page's back
        assert client.delete(f"/api/memories/{by_text[cat]}").status_code == 204
    page.get_by_role("button", name=f"Delete memory: {cat}").click()
    expect(page.locator("#alert")).to_contain_text("not found")
    expect(page.locator("#memories")).to_have_text("No memories.")
