"""The chat page's conversation features in Chromium against a real ``mami serve``: Markdown
replies (and raw HTML in them staying inert), rename, search, regenerate, edit and resend,
copy, the model picker, per-conversation settings, the welcome state and citations.

The server's models come from tests/e2e/echo_plugin: ``mirror`` answers with the user's
message (so the test decides what Markdown the reply holds) and reports the settings it
was given for ``settings?``; ``context-echo`` is the server's default model.
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.e2e.conftest import screenshot
from tests.e2e.pages import finished, replies, send
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
    text.locator("a").first.click() if text.locator("a").count() else None
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
