"""Placeholder PNGs that say why there is no image. Pillow is imported on first use."""

from __future__ import annotations

import functools
import io

PLACEHOLDER_KEY = "mami:placeholder"

REASONS = {
    "unavailable": "the image server is unavailable",
    "timed_out": "the image server did not answer in time",
    "out_of_memory": "the image server ran out of GPU memory",
    "rejected": "the image server rejected the request",
    "invalid_response": "the image server sent an invalid response",
    "server_error": "the image server failed",
    "circuit_open": "the image server is failing: not trying for now",
}


def describe(reason: str) -> str:
    """A sentence for a reason code (unknown codes are shown as they are)."""
    return REASONS.get(reason, reason)


@functools.lru_cache(maxsize=64)
def placeholder_png(reason: str, width: int = 512, height: int = 512) -> bytes:
    """A grey PNG of (clamped) ``width`` x ``height`` saying why no image was made.

    The reason code is also stored in the PNG's ``mami:placeholder`` text chunk, so a
    client can tell it from a real image. Cached: failing fast must stay cheap.
    """
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    width, height = (max(128, min(1024, v)) for v in (width, height))
    image = Image.new("RGB", (width, height), (64, 64, 72))
    draw = ImageDraw.Draw(image)
    draw.rectangle((4, 4, width - 5, height - 5), outline=(200, 80, 80), width=3)
    lines = ["mami: no image", "", *_wrap(describe(reason), max(10, (width - 24) // 7)), "",
             f"({reason})"]
    y = max(12, height // 2 - 8 * len(lines))
    for line in lines:
        draw.text((14, y), line, fill=(235, 235, 235))
        y += 16
    meta = PngInfo()
    meta.add_text(PLACEHOLDER_KEY, reason)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=meta)
    return out.getvalue()


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return [*lines, current] if current else lines
