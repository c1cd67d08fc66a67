"""The chat page in Chromium against a real ``mami serve`` whose Chroma directory is
deleted while it runs: the reply still comes, without the documents, and a small notice
under it says that the documents were unavailable and why."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import free_port
from tests.e2e.conftest import screenshot, server_config
from tests.e2e.pages import finished, replies, send, sign_in
from tests.e2e.server import MamiServer
from tests.forge_standin import ForgeStandIn

FACT = "The emergency generator is tested every second Tuesday at seven."


@pytest.fixture
def rag_mami(tmp_path: Path, forge: ForgeStandIn, echo_plugin_site: Path
             ) -> Iterator[MamiServer]:
    """Its own server (its Chroma directory is deleted): ``context-echo`` answers with
    the passages it was given, or "No passages."."""
    server = MamiServer(tmp_path, server_config(tmp_path / "data", forge.url,
                                                llm="context-echo"),
                        free_port(), env={"PYTHONPATH": str(echo_plugin_site)})
    server.start()
    assert server.token, f"no first-start token URL printed:\n{server.output}"
    yield server
    server.stop()


def test_a_reply_without_the_documents_shows_a_notice(page: Any, rag_mami: MamiServer,
                                                      tmp_path: Path) -> None:
    with rag_mami.api() as client:
        uploaded = client.post("/api/documents", json={"source": "generator.md", "text": FACT})
    assert uploaded.status_code == 201, uploaded.text
    sign_in(page, rag_mami)
    first = send(page, "When is the generator tested?")
    assert "From your documents" in finished(first)
    expect(first.locator(".sources .citation")).to_have_text(["[1]"])
    assert first.locator(".warnings").count() == 0

    shutil.rmtree(tmp_path / "data" / "chroma")
    second = send(page, "When is the generator tested?")
    assert finished(second).strip() == "No passages."
    expect(second).to_have_attribute("data-status", "complete")
    notice = second.locator(".warnings .warning")
    expect(notice).to_have_count(1)
    expect(notice).to_contain_text("Note: documents unavailable: the Chroma directory")
    expect(notice).to_contain_text("is missing")
    assert second.locator(".sources").count() == 0
    # Under the reply's text, above its buttons.
    order = second.evaluate("b => Array.from(b.children).map(c => c.classList[0])")
    assert order.index("warnings") > order.index("text"), order
    assert order.index("warnings") < order.index("actions")
    assert replies(page).first.locator(".warnings").count() == 0
    assert not page.problems, page.problems
    screenshot(page, "reply-without-documents")
