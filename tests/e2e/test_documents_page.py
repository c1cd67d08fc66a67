"""Documents in the page: upload, an answer that uses the document, bad files, delete.

The server's model is ``context-echo`` (tests/e2e/echo_plugin), which answers with
the passages mami put into its prompt: what reaches the model is checked exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot
from tests.e2e.pages import ask, sign_in
from tests.e2e.server import MamiServer

pytestmark = pytest.mark.slow

NOTES = (
    "# Notes about the garden\n\n"
    "The blue door at the end of the garden opens with the password PELICAN-42.\n"
    "The red door has no lock.\n"
)


def document_names(server: MamiServer) -> list[str]:
    with server.api() as client:
        response = client.get("/api/documents")
    response.raise_for_status()
    return [d["source"] for d in response.json()]


def test_upload_a_document_and_get_an_answer_from_it(
    page: Any, echo_mami: MamiServer, tmp_path: Path
) -> None:
    notes = tmp_path / "garden-notes.md"
    notes.write_text(NOTES, encoding="utf-8")
    with echo_mami.api() as client:
        client.delete("/api/documents").raise_for_status()
    sign_in(page, echo_mami)
    page.click("#documents-panel summary")
    expect(page.locator("#documents")).to_have_text("No documents.")

    page.set_input_files("#upload-file", str(notes))
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#documents li.item")).to_have_count(1, timeout=60_000)
    expect(page.locator("#documents li.item")).to_contain_text("garden-notes.md")
    assert document_names(echo_mami) == ["garden-notes.md"]
    screenshot(page, "10-document-uploaded")

    answer = ask(page, "Which password opens the blue door?")
    assert "PELICAN-42" in answer
    screenshot(page, "11-answer-from-document")


def test_bad_files_are_refused_in_words_and_nothing_is_stored(
    page: Any, echo_mami: MamiServer, tmp_path: Path
) -> None:
    before = document_names(echo_mami)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "photo.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    sign_in(page, echo_mami)
    page.click("#documents-panel summary")
    for bad, reason in ((empty, "the file is empty"), (binary, "binary file")):
        page.set_input_files("#upload-file", str(bad))
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#alert")).to_contain_text("Upload failed", timeout=30_000)
        expect(page.locator("#alert")).to_contain_text(reason)
        page.click("#alert-close")
    page.set_input_files("#upload-file", [])
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#alert")).to_contain_text("Choose a file")
    assert document_names(echo_mami) == before


def test_deleting_a_document_takes_it_out_of_answers(page: Any, echo_mami: MamiServer) -> None:
    with echo_mami.api() as client:
        client.delete("/api/documents").raise_for_status()
        client.post("/api/documents", json={"source": "door.md", "text": NOTES}).raise_for_status()
    sign_in(page, echo_mami)
    assert "PELICAN-42" in ask(page, "Which password opens the blue door?")
    page.click("#documents-panel summary")
    item = page.locator("#documents li.item", has_text="door.md")
    item.get_by_role("button", name="Delete document: door.md").click()
    expect(page.locator("#documents")).to_have_text("No documents.", timeout=30_000)
    assert document_names(echo_mami) == []
    assert ask(page, "Which password opens the blue door?").strip() == "No passages."
