"""Images in the page: ``/image <prompt>`` in chat, progress while the stand-in Forge
works, the finished picture, and the placeholder's reason when Forge fails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import screenshot
from tests.e2e.pages import finished, send, sign_in
from tests.e2e.server import MamiServer
from tests.forge_standin import ForgeStandIn

pytestmark = pytest.mark.slow

IMAGE_TIMEOUT = 60_000


@pytest.fixture
def forge_mode(forge: ForgeStandIn) -> Iterator[Any]:
    """``forge_mode(mode, delay)`` changes the stand-in for one test."""

    def change(mode: str, delay: float = 1.5) -> None:
        forge.delay = delay
        forge.set_mode(mode)

    yield change
    change("ok")


def image_size(card: Any) -> tuple[int, int]:
    img = card.locator("img")
    expect(img).to_be_visible(timeout=IMAGE_TIMEOUT)
    img.evaluate("i => i.decode()")
    return tuple(img.evaluate("i => [i.naturalWidth, i.naturalHeight]"))  # type: ignore[return-value]


def test_an_image_shows_progress_then_the_picture(
    page: Any, mami: MamiServer, forge: ForgeStandIn, forge_mode: Any
) -> None:
    forge_mode("slow", delay=5.0)
    sign_in(page, mami)
    reply = send(page, "/image a red fox in the snow")
    assert "a red fox in the snow" in finished(reply)
    card = page.locator("#messages li.image-card")
    expect(card).to_have_count(1)
    expect(card.locator("figcaption")).to_contain_text("Drawing the image", timeout=IMAGE_TIMEOUT)
    expect(card.locator("progress")).to_be_visible()
    # Forge's progress reaches the page while the job runs.
    expect(card.locator("figcaption")).to_have_text(
        re.compile(r"Drawing the image… [1-9]\d?%"), timeout=IMAGE_TIMEOUT)
    screenshot(page, "12-image-in-progress")
    expect(card.locator("figcaption")).to_have_text("Image ready.", timeout=IMAGE_TIMEOUT)
    assert image_size(card) == (512, 512)
    expect(card.locator("progress")).to_have_count(0)
    assert forge.prompts["a red fox in the snow"] == 1
    screenshot(page, "13-image-ready")

    page.reload()  # the conversation's images come back with it
    expect(page.locator("#messages li.image-card figcaption")).to_have_text(
        "Image ready.", timeout=IMAGE_TIMEOUT)
    assert page.problems == []


def test_a_failed_image_shows_the_placeholder_and_why(
    page: Any, mami: MamiServer, forge_mode: Any
) -> None:
    forge_mode("oom")
    sign_in(page, mami)
    finished(send(page, "/image a castle on a hill"))
    card = page.locator("#messages li.image-card")
    expect(card.locator("figcaption")).to_contain_text(
        "No image: the image server ran out of GPU memory", timeout=IMAGE_TIMEOUT)
    expect(card).to_have_attribute("data-state", "placeholder")
    assert image_size(card) == (512, 512)
    expect(card.locator("img")).to_have_attribute("alt", "Placeholder: the image server ran out "
                                                         "of GPU memory")
    screenshot(page, "14-image-placeholder")


def test_a_bad_image_request_is_answered_in_words(page: Any, mami: MamiServer) -> None:
    sign_in(page, mami)
    answer = finished(send(page, "/image "))
    assert "can't make that image" in answer
    expect(page.locator("#messages li.image-card")).to_have_count(0)
