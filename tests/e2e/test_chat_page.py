"""The chat page in headless Chromium against ``mami serve`` with the local model:
sign-in, streamed replies, stop, errors in words, keyboard, phone size, restart."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import free_port
from tests.e2e.conftest import screenshot
from tests.e2e.pages import (
    REPLY_TIMEOUT,
    current_conversation,
    finished,
    replies,
    send,
    sign_in,
    stored_messages,
)
from tests.e2e.server import MamiServer

pytestmark = pytest.mark.slow

# Records every text the assistant bubble showed while it was still streaming.
WATCH_STREAM = """() => {
  window.__streamed = [];
  new MutationObserver(() => {
    const busy = document.querySelector('#messages li[aria-busy="true"] .text');
    if (busy && busy.textContent) window.__streamed.push(busy.textContent);
  }).observe(document.getElementById('messages'),
             {subtree: true, childList: true, characterData: true});
}"""


def test_page_is_served_with_a_self_only_policy(mami: MamiServer) -> None:
    page = httpx.get(f"{mami.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert '<script type="module" src="/ui/app.js">' in page.text
    assert httpx.get(f"{mami.url}/ui/app.js").headers["content-type"].startswith("text/javascript")
    missing = httpx.get(f"{mami.url}/ui/secret.py")
    assert missing.status_code == 404
    assert "secret.py" in missing.json()["error"]["message"]
    assert httpx.get(f"{mami.url}/ui/..%2F__init__.py").status_code == 404


def test_sign_in_takes_the_token_out_of_the_address(page: Any, mami: MamiServer) -> None:
    sign_in(page, mami)
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('mami.token')") == mami.token
    expect(page.locator("#signin")).to_be_hidden()
    expect(page.locator("#composer-input")).to_be_focused()
    screenshot(page, "01-signed-in")
    page.keyboard.type("half a thought")
    page.reload()  # the stored token signs in again; the draft is still there
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    expect(page.locator("#composer-input")).to_have_value("half a thought")
    assert page.problems == []


def test_without_a_token_the_page_asks_for_one(page: Any, mami: MamiServer) -> None:
    page.goto(mami.url)
    expect(page.locator("#signin")).to_be_visible(timeout=30_000)
    expect(page.locator("#token-input")).to_be_focused()
    expect(page.locator("#alert")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("Not signed in")
    screenshot(page, "00-sign-in")


def test_a_wrong_token_says_unauthorized(page: Any, mami: MamiServer) -> None:
    page.goto(f"{mami.url}/?token=mami_0000000000000000_not-a-real-token")
    expect(page.locator("#alert")).to_contain_text("Unauthorized", timeout=30_000)
    expect(page.locator("#signin")).to_be_visible()
    assert "token" not in page.url
    assert page.evaluate("localStorage.getItem('mami.token')") is None
    screenshot(page, "02-unauthorized")
    page.fill("#token-input", mami.token)
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    expect(page.locator("#alert")).to_be_hidden()


def test_a_reply_streams_into_the_page_and_is_stored(page: Any, mami: MamiServer) -> None:
    sign_in(page, mami)
    page.evaluate(WATCH_STREAM)
    reply = send(page, "Hello! Please introduce yourself in two sentences.")
    expect(page.locator("#composer-input")).to_have_value("")
    text = finished(reply)
    assert text
    expect(reply).to_have_attribute("data-status", "complete")
    # Replies are rendered Markdown: compare the words, not the line breaks between blocks.
    words = " ".join(text.split())
    streamed = [" ".join(s.split()) for s in page.evaluate("window.__streamed")]
    partial = [s for s in streamed if s != words]
    assert partial, "the reply appeared in one piece instead of streaming"
    assert all(words.startswith(s) for s in streamed), (words, streamed)
    screenshot(page, "03-streamed-reply")

    conversation = current_conversation(page)
    messages = stored_messages(mami, conversation)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert " ".join(messages[1]["content"].split()) == words
    assert messages[1]["status"] == "complete"
    expect(page.locator(f'#conversations li[data-conversation="{conversation}"]')).to_be_visible()

    page.reload()  # the conversation comes back from the server
    expect(replies(page).last.locator(".text")).to_have_text(words, timeout=30_000)
    assert page.problems == []


def test_stop_ends_a_reply_and_keeps_what_arrived(page: Any, mami: MamiServer) -> None:
    sign_in(page, mami)
    reply = send(page, "Write a very long story, at least 600 words, about a dragon who cooks.")
    expect(reply.locator(".text")).not_to_have_text("", timeout=REPLY_TIMEOUT)
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    finished(reply)
    expect(reply).to_have_attribute("data-status", "interrupted")
    expect(reply.locator(".note")).to_have_text("Stopped before the end.")
    expect(page.locator("#send")).to_be_enabled()
    screenshot(page, "04-stopped-reply")
    messages = stored_messages(mami, current_conversation(page))
    assert messages[-1]["status"] == "interrupted"
    shown = str(reply.locator(".text").text_content())
    assert " ".join(messages[-1]["content"].split()) == " ".join(shown.split())


def test_keyboard_alone_is_enough(page: Any, mami: MamiServer) -> None:
    sign_in(page, mami)
    page.keyboard.type("Line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("Line two: say hi")
    expect(page.locator("#composer-input")).to_have_value("Line one\nLine two: say hi")
    page.keyboard.press("Enter")
    expect(page.locator("#messages li.user .text").last).to_have_text(
        "Line one\nLine two: say hi")
    reply = replies(page).first
    expect(reply).to_have_attribute("aria-busy", "true", timeout=REPLY_TIMEOUT)
    page.keyboard.press("Escape")  # stops the reply
    finished(reply)
    expect(page.locator("#stop")).to_be_disabled()

    # Tab from the top of the page reaches "New chat" and the panels.
    page.locator("body").focus()
    reached = []
    for _ in range(6):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id"))
        if reached[-1] == "new-chat":
            break
    assert "new-chat" in reached, reached
    page.keyboard.press("Enter")
    expect(page.locator("#messages li")).to_have_count(0)
    expect(page.locator("#composer-input")).to_be_focused()


def test_phone_sized_screen(browser: Any, mami: MamiServer) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 760}, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    try:
        sign_in(page, mami)
        expect(page.locator("#sidebar")).to_be_hidden()
        expect(page.locator("#composer-input")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        screenshot(page, "05-phone")
        page.click("#menu-button")
        expect(page.locator("#sidebar")).to_be_visible()
        expect(page.locator("#menu-button")).to_have_attribute("aria-expanded", "true")
        screenshot(page, "06-phone-menu")
        page.keyboard.press("Escape")
        expect(page.locator("#sidebar")).to_be_hidden()
    finally:
        context.close()


def test_a_message_over_the_limit_is_refused_in_words_and_kept(
    page: Any, mami: MamiServer
) -> None:
    sign_in(page, mami)
    too_long = "x" * 5000  # the server allows 4000 bytes per WebSocket message
    page.fill("#composer-input", too_long)
    page.keyboard.press("Enter")
    expect(page.locator("#alert")).to_contain_text("Rate limited", timeout=30_000)
    expect(page.locator("#alert")).to_contain_text("message too large or too frequent")
    expect(page.locator("#composer-input")).to_have_value(too_long)
    expect(page.locator("#messages li.user")).to_have_count(0)
    screenshot(page, "07-rate-limited")
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)


def test_the_page_opened_at_localhost_connects(page: Any, mami: MamiServer) -> None:
    """mami printed 127.0.0.1; the user typed localhost: the same server, its own origin."""
    page.goto(mami.token_url.replace("127.0.0.1", "localhost"))
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    expect(page.locator("#alert")).not_to_contain_text("Forbidden")


def test_an_origin_that_is_not_allowed_is_named(page: Any, mami: MamiServer,
                                                 tmp_path: Any) -> None:
    """A server that serves any Host trusts only the listed origins (a page's own origin
    proves nothing there: DNS rebinding); the page names what to add."""
    config = mami.config_path.read_text(encoding="utf-8").replace(
        'host = "127.0.0.1"', 'host = "127.0.0.1"\nallowed_hosts = ["*"]').replace(
        str(mami.workdir / "data"), str(tmp_path / "data"))
    server = MamiServer(tmp_path, config, free_port()).start()
    try:
        page.goto(server.token_url.replace("127.0.0.1", "localhost"))
        expect(page.locator("#alert")).to_contain_text("Forbidden", timeout=30_000)
        expect(page.locator("#alert")).to_contain_text(
            f'add "http://localhost:{server.port}" to allowed_origins')
        expect(page.locator("#send")).to_be_disabled()
        screenshot(page, "16-forbidden-origin")
    finally:
        server.stop()


def test_the_page_reconnects_after_a_restart_and_keeps_the_draft(
    page: Any, mami: MamiServer
) -> None:
    sign_in(page, mami)
    assert finished(send(page, "Hi! Say hello."))
    conversation = current_conversation(page)
    mami.stop()
    expect(page.locator("#alert")).to_contain_text("Disconnected", timeout=30_000)
    expect(page.locator("#status")).to_contain_text("reconnecting")
    page.fill("#composer-input", "Are you back? Answer in one word.")
    page.keyboard.press("Enter")  # refused politely while offline: the text stays
    expect(page.locator("#composer-input")).to_have_value("Are you back? Answer in one word.")
    screenshot(page, "08-disconnected")

    mami.start()
    expect(page.locator("#status")).to_have_text("Connected", timeout=60_000)
    expect(page.locator("#composer-input")).to_have_value("Are you back? Answer in one word.")
    page.keyboard.press("Enter")
    assert finished(replies(page).nth(1))
    assert current_conversation(page) == conversation
    stored = stored_messages(mami, conversation)
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[2]["content"] == "Are you back? Answer in one word."
    screenshot(page, "09-after-restart")


def test_a_revoked_token_signs_the_page_out(page: Any, mami: MamiServer) -> None:
    with mami.api() as client:
        created = client.post("/api/tokens", json={"name": "phone"})
    created.raise_for_status()
    token = created.json()
    page.goto(f"{mami.url}/?token={token['token']}")
    expect(page.locator("#status")).to_have_text("Connected", timeout=30_000)
    with mami.api() as client:
        assert client.delete(f"/api/tokens/{token['id']}").status_code == 204
    expect(page.locator("#signin")).to_be_visible(timeout=30_000)
    expect(page.locator("#alert")).to_contain_text("Unauthorized")
    assert page.evaluate("localStorage.getItem('mami.token')") is None


def test_conversations_are_deleted_from_the_list_with_a_confirmation(
    page: Any, mami: MamiServer
) -> None:
    with mami.api() as client:
        made = [client.post("/api/conversations", json={"title": title}).json()
                for title in ("Trip plans to delete", "Old notes gone elsewhere")]
    trip, notes = made
    sign_in(page, mami)
    assert finished(send(page, "Hi! This chat will be deleted."))
    current = current_conversation(page)
    expect(page.locator(f'#conversations li[data-conversation="{current}"]')).to_be_visible()

    def exists(conversation_id: str) -> bool:
        with mami.api() as client:
            status = client.get(f"/api/conversations/{conversation_id}/messages").status_code
        assert status in (200, 404)
        return status == 200

    asked: list[str] = []

    def answer(accept: bool) -> None:
        def handle(dialog: Any) -> None:
            asked.append(dialog.message)
            if accept:
                dialog.accept()
            else:
                dialog.dismiss()

        page.once("dialog", handle)

    # Keyboard only: focus the button by its accessible name and press Enter; "Cancel" keeps it.
    delete_trip = page.get_by_role("button", name="Delete conversation: Trip plans to delete")
    delete_trip.focus()
    answer(accept=False)
    page.keyboard.press("Enter")
    expect(delete_trip).to_be_visible()
    assert asked == ['Delete the conversation "Trip plans to delete" and all its messages? '
                     "This cannot be undone."]
    assert exists(trip["id"])

    answer(accept=True)
    page.keyboard.press("Enter")
    expect(page.locator(f'#conversations li[data-conversation="{trip["id"]}"]')).to_have_count(0)
    expect(page.locator("#announce")).to_have_text("Conversation deleted: Trip plans to delete")
    assert page.evaluate("document.activeElement.closest('#conversations') !== null")
    assert not exists(trip["id"])
    assert exists(current) and exists(notes["id"])

    # Deleting the open conversation empties the chat.
    answer(accept=True)
    page.get_by_role("button", name="Delete conversation: Hi! This chat will be deleted.").click()
    expect(page.locator(f'#conversations li[data-conversation="{current}"]')).to_have_count(0)
    expect(page.locator("#messages li")).to_have_count(0)
    assert page.evaluate("localStorage.getItem('mami.conversation')") is None
    assert not exists(current)
    assert page.problems == []
    screenshot(page, "17-conversation-deleted")

    with mami.api() as client:  # gone behind the page's back
        assert client.delete(f"/api/conversations/{notes['id']}").status_code == 204
    answer(accept=True)
    page.get_by_role("button", name="Delete conversation: Old notes gone elsewhere").click()
    expect(page.locator("#alert")).to_contain_text(
        'Already gone: the conversation "Old notes gone elsewhere" was deleted elsewhere.')
    expect(page.locator(f'#conversations li[data-conversation="{notes["id"]}"]')).to_have_count(0)
