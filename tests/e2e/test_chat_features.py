"""The chat page's conversation features in Chromium against a real ``mami serve``: Markdown
replies (and raw HTML in them staying inert), rename, search, regenerate, edit and resend,
copy, the model picker, per-conversation settings, the welcome state and citations.

The server's models come from tests/e2e/echo_plugin: ``mirror`` answers with the user's
message (so the test decides what Markdown the reply holds) and reports the settings it
was given for ``settings?``; ``context-echo`` is the server's default model.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot
from tests.e2e.pages import REPLY_TIMEOUT, current_conversation, finished, replies, send, sign_in
from tests.e2e.server import MamiServer

MARKDOWN = """# Plan

Some **bold** and `inline code`, a [link](https://example.org/doc) and a
[bad one](javascript:alert(1)).

```python
def greet(name):
    return f"hello {name}"
```

| tool | use |
|------|-----|
| ruff | lint |
| mypy | types |

- first
- second

1. one
2. two
"""

XSS = ('Look: <img src="x" onerror="window.__pwned = 1"> and '
       '<script>window.__pwned = 2</script> and <a href="javascript:window.__pwned=3">x</a>')


def new_conversation(server: MamiServer, **settings: Any) -> str:
    with server.api() as client:
        response = client.post("/api/conversations", json=settings)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def conversation(server: MamiServer, conversation_id: str) -> dict[str, Any]:
    with server.api() as client:
        response = client.get(f"/api/conversations/{conversation_id}")
    response.raise_for_status()
    return dict(response.json())


def stored(server: MamiServer, conversation_id: str) -> list[dict[str, Any]]:
    with server.api() as client:
        response = client.get(f"/api/conversations/{conversation_id}/messages")
    response.raise_for_status()
    return list(response.json())


def open_conversation(page: Any, server: MamiServer, conversation_id: str) -> None:
    """Sign in with ``conversation_id`` as the remembered conversation."""
    page.goto(server.url + "/ui/icon.svg")
    page.evaluate("([token, id]) => { localStorage.setItem('mami.token', token); "
                  "localStorage.setItem('mami.conversation', id); }",
                  [server.token, conversation_id])
    page.goto(server.url + "/")
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)


def test_a_markdown_reply_renders_as_elements_and_html_in_it_stays_inert(
        page: Any, echo_mami: MamiServer) -> None:
    cid = new_conversation(echo_mami, model="mirror")
    open_conversation(page, echo_mami, cid)
    reply = send(page, MARKDOWN)
    finished(reply)
    text = reply.locator(".text")
    expect(text.locator("h1")).to_have_text("Plan")
    expect(text.locator("strong")).to_have_text("bold")
    expect(text.locator("p code")).to_have_text("inline code")
    code = text.locator("pre code.language-python")
    expect(code).to_contain_text('return f"hello {name}"')
    assert code.locator("span.hljs-keyword").count() >= 2  # def, return: highlighted
    expect(text.locator("table th")).to_have_text(["tool", "use"])
    expect(text.locator("table tbody tr")).to_have_count(2)
    expect(text.locator("ul > li")).to_have_text(["first", "second"])
    expect(text.locator("ol > li")).to_have_text(["one", "two"])
    link = text.locator("a", has_text="link")
    expect(link).to_have_attribute("href", "https://example.org/doc")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    assert text.locator("a[href^='javascript']").count() == 0
    expect(text.locator(".code-block button.copy-code")).to_have_text("Copy")

    reply = send(page, XSS)
    finished(reply)
    text = reply.locator(".text")
    expect(text).to_contain_text('<img src="x" onerror="window.__pwned = 1">')
    expect(text).to_contain_text("<script>window.__pwned = 2</script>")
    assert text.locator("img, script").count() == 0
    assert text.locator("a[href^='javascript']").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    assert [p for p in page.problems if "favicon" not in p] == []

    # Stored replies render the same after a reload.
    page.reload()
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    first = replies(page).first.locator(".text")
    expect(first.locator("table tbody tr")).to_have_count(2)
    expect(first.locator("pre code .hljs-keyword").first).to_be_visible()
    assert page.locator("#messages img, #messages script").count() == 0
    screenshot(page, "markdown-1280-light")


def test_welcome_model_picker_and_settings_reach_the_model_and_persist(
        page: Any, echo_mami: MamiServer) -> None:
    sign_in(page, echo_mami)
    page.click("#new-chat")
    welcome = page.locator("#welcome")
    expect(welcome).to_be_visible()
    expect(page.locator("#welcome-model")).to_have_text("Model: context-echo.")
    expect(page.locator("#suggestions button")).to_have_count(4)
    with echo_mami.api() as client:
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "mirror" in models
    expect(page.locator("#model-select option")).to_have_text(
        ["Default model (context-echo)", *models])

    page.select_option("#model-select", "mirror")
    expect(page.locator("#welcome-model")).to_have_text("Model: mirror.")
    cid = current_conversation(page)
    assert conversation(echo_mami, cid)["model"] == "mirror"

    page.click("#settings-button")
    page.fill("#setting-system", "You are terse.\nSecond line.")
    page.fill("#setting-temperature", "0.3")
    page.fill("#setting-max-tokens", "50")
    page.click("#settings-panel button[type=submit]")
    expect(page.locator("#announce")).to_have_text("Settings saved.")
    saved = conversation(echo_mami, cid)
    assert (saved["system_prompt"], saved["temperature"], saved["max_tokens"]) == (
        "You are terse.\nSecond line.", 0.3, 50)

    reply = send(page, "settings?")
    expect(welcome).to_be_hidden()
    text = finished(reply)
    assert "system: You are terse." in text and "temperature: 0.3" in text
    assert "max_tokens: 50" in text

    page.fill("#setting-temperature", "7")  # out of range: the form refuses it
    page.click("#settings-panel button[type=submit]")
    expect(page.locator("#setting-temperature:invalid")).to_have_count(1)
    assert conversation(echo_mami, cid)["temperature"] == 0.3

    page.reload()
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    expect(page.locator("#model-select")).to_have_value("mirror")
    expect(page.locator("#setting-system")).to_have_value("You are terse.\nSecond line.")
    expect(page.locator("#setting-temperature")).to_have_value("0.3")
    expect(page.locator("#setting-max-tokens")).to_have_value("50")
    page.click("#settings-button")
    page.click("#settings-reset")
    expect(page.locator("#setting-max-tokens")).to_have_value("")
    assert conversation(echo_mami, cid)["max_tokens"] is None
    assert conversation(echo_mami, cid)["model"] == "mirror"
    assert [p for p in page.problems if "favicon" not in p] == []


def test_copy_regenerate_edit_rename_and_search(page: Any, echo_mami: MamiServer) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                   origin=echo_mami.url)
    other = new_conversation(echo_mami, title="Unrelated shopping list")
    cid = new_conversation(echo_mami, model="mirror")
    open_conversation(page, echo_mami, cid)
    reply = send(page, "alpha **bravo**")
    assert finished(reply).strip() == "alpha bravo"

    reply.locator("button.action-copy").click()
    expect(reply.locator("button.action-copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "alpha **bravo**"

    first_id = reply.get_attribute("data-message-id")
    reply.locator("button.action-regenerate").click()
    again = replies(page).first
    expect(again).not_to_have_attribute("data-message-id", first_id or "", timeout=REPLY_TIMEOUT)
    assert finished(again).strip() == "alpha bravo"
    rows = stored(echo_mami, cid)
    assert [r["content"] for r in rows] == ["alpha **bravo**"] * 2
    assert rows[1]["id"] == again.get_attribute("data-message-id") != first_id

    user = page.locator("#messages li[data-role=user]").first
    user.locator("button.action-edit").click()
    page.fill("#messages form.edit textarea", "charlie *delta*")
    page.keyboard.press("Enter")
    edited = replies(page).first
    expect(edited.locator(".text em")).to_have_text("delta", timeout=REPLY_TIMEOUT)
    finished(edited)
    expect(page.locator("#messages li[data-role]")).to_have_count(2)
    assert [r["content"] for r in stored(echo_mami, cid)] == ["charlie *delta*"] * 2

    item = page.locator(f"#conversations li[data-conversation='{cid}']")
    item.locator("button", has_text="Rename").click()
    page.fill("#conversations form.rename input", "Project notes")
    page.keyboard.press("Enter")
    expect(page.locator(f"#conversations [data-id='{cid}']")).to_have_text("Project notes")
    expect(page.locator("#chat-title")).to_have_text("Project notes")

    page.fill("#search", "charlie")
    expect(page.locator("#conversations li[data-conversation]")).to_have_count(1)
    expect(page.locator(f"#conversations [data-id='{cid}']")).to_be_visible()
    page.fill("#search", "shopping")
    expect(page.locator(f"#conversations [data-id='{other}']")).to_be_visible()
    expect(page.locator("#conversations li[data-conversation]")).to_have_count(1)
    page.fill("#search", "no such words anywhere")
    expect(page.locator("#conversations li.empty")).to_contain_text("No conversation contains")
    page.fill("#search", "")
    expect(page.locator("#conversations li[data-conversation]")).to_have_count(
        len(echo_mami.api().get("/api/conversations").json()))

    page.reload()
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    expect(page.locator("#chat-title")).to_have_text("Project notes")
    expect(page.locator("#messages li[data-role=user] .text")).to_have_text("charlie *delta*")
    expect(replies(page).first.locator(".text em")).to_have_text("delta")
    assert [p for p in page.problems if "favicon" not in p] == []


SOURCES = [
    {"n": 1, "document_id": "d1", "source": "handbook.pdf", "chunk_index": 4, "page": 3,
     "score": 0.82, "text": "Holidays are booked through the HR portal."},
    {"n": 2, "document_id": "d2", "source": "notes.md", "chunk_index": 0, "page": None,
     "score": 0.41, "text": "Ask Sam about <b>the</b> calendar."},
]


def test_stored_sources_show_as_numbered_citations_that_open_the_passage(
        page: Any, echo_mami: MamiServer) -> None:
    """The page side of the sources contract (CONTRACTS.md), fed through the messages
    listing; the backend that stores sources is issue-18-docs'."""
    cid = new_conversation(echo_mami, model="mirror")
    open_conversation(page, echo_mami, cid)
    finished(send(page, "How do I book holidays?"))

    def with_sources(route: Any) -> None:
        response = route.fetch()
        rows = response.json()
        for row in rows:
            row["sources"] = SOURCES if row["role"] == "assistant" else []
        route.fulfill(response=response, json=rows)

    page.route(re.compile(r".*/api/conversations/[^/]+/messages$"), with_sources)
    page.reload()
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    citations = replies(page).first.locator(".sources .citation")
    expect(citations).to_have_text(["[1]", "[2]"])
    expect(citations.first).to_have_attribute("title", "handbook.pdf, page 3")
    citations.first.click()
    passage = replies(page).first.locator(".passage")
    expect(passage).to_be_visible()
    expect(passage.locator(".passage-source")).to_have_text(
        "[1] handbook.pdf, page 3 · relevance 0.82")
    expect(passage.locator("blockquote")).to_have_text(SOURCES[0]["text"])
    citations.nth(1).click()
    expect(passage.locator(".passage-source")).to_contain_text("[2] notes.md")
    expect(passage.locator("blockquote")).to_have_text("Ask Sam about <b>the</b> calendar.")
    assert passage.locator("b").count() == 0
    citations.nth(1).click()
    expect(passage).to_be_hidden()


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
def test_screenshots(page: Any, echo_mami: MamiServer, scheme: str, width: int) -> None:
    """For people to look at (tests/output/screenshots); also checks the alert banner
    follows the colour scheme."""
    page.emulate_media(color_scheme=scheme)
    page.set_viewport_size({"width": width, "height": 860})
    cid = new_conversation(echo_mami, model="mirror", title="Release checklist")
    open_conversation(page, echo_mami, cid)
    screenshot(page, f"welcome-{width}-{scheme}")
    finished(send(page, MARKDOWN))
    page.evaluate("document.getElementById('alert-text').textContent = 'An example alert.';"
                  "document.getElementById('alert').hidden = false;")
    background = page.evaluate("getComputedStyle(document.getElementById('alert')).backgroundColor")
    dark = sum(int(v) for v in re.findall(r"\d+", background)[:3]) < 3 * 128
    assert dark == (scheme == "dark"), background
    screenshot(page, f"chat-{width}-{scheme}")
    if width < 700:
        page.click("#menu-button")
        screenshot(page, f"menu-{width}-{scheme}")


def test_a_reply_from_a_pdf_cites_its_file_and_page(
        page: Any, echo_mami: MamiServer, tmp_path: Any) -> None:
    """The live path: a PDF uploaded through the page (with its progress bar), the
    server's ``sources`` event, and the citation that opens the passage."""
    from tests.document_files import make_pdf

    pdf = tmp_path / "handbook.pdf"
    pdf.write_bytes(make_pdf(["Welcome to the company. Lunch is at noon.",
                              "Holidays are booked through the ORCHID-7 portal by Friday."]))
    with echo_mami.api() as client:
        client.delete("/api/documents").raise_for_status()
    sign_in(page, echo_mami)
    page.click("#new-chat")
    page.click("#documents-panel summary")
    page.set_input_files("#upload-file", str(pdf))
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#documents li.item")).to_contain_text("handbook.pdf", timeout=60_000)
    expect(page.locator("#upload-progress")).to_be_hidden()

    reply = send(page, "How are holidays booked on the ORCHID-7 portal?")
    finished(reply)
    citation = reply.locator(".sources .citation", has_text="[1]")
    expect(citation).to_be_visible()
    titles = [str(c.get_attribute("title")) for c in reply.locator(".citation").all()]
    assert "handbook.pdf, page 2" in titles, titles
    reply.locator(".citation[title='handbook.pdf, page 2']").first.click()
    passage = reply.locator(".passage")
    expect(passage.locator(".passage-source")).to_contain_text("handbook.pdf, page 2")
    expect(passage.locator("blockquote")).to_contain_text("ORCHID-7 portal")

    page.reload()  # the stored reply keeps its sources
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    expect(replies(page).last.locator(".citation[title='handbook.pdf, page 2']")).to_have_count(1)
