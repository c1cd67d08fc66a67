"""Placeholder PNGs that say why there is no image. Pillow is imported on first use."""

from __future__ import annotations

import functools
import io
from typing import Any

PLACEHOLDER_KEY = "mami:placeholder"

REASONS = {
    "unavailable": "the image server is unavailable",
    "timed_out": "the image server did not answer in time",
    "out_of_memory": "the image server ran out of GPU memory for this image: try a smaller "
                     "size or fewer steps",
    "rejected": "the image server rejected the request",
    "invalid_response": "the image server sent an invalid response",
    "server_error": "the image server failed",
    "interrupted": "the image server stopped this image before it was finished",
    "unknown_checkpoint": "the image server does not have this checkpoint",
    "unknown_sampler": "the image server does not have this sampler",
    "unknown_scheduler": "the image server does not have this scheduler",
    "circuit_open": "the image server is failing: not trying for now",
}


def describe(reason: str) -> str:
    """A sentence for a reason code (unknown codes are shown as they are)."""
    return REASONS.get(reason, reason)


@functools.lru_cache(maxsize=64)
def placeholder_png(reason: str, width: int = 512, height: int = 512) -> bytes:
    """A grey PNG of exactly ``width`` x ``height`` saying why no image was made, in
    Pillow's bundled scalable font sized to the image.

    The reason code is also stored in the PNG's ``mami:placeholder`` text chunk, so a
    client can tell it from a real image. Cached: failing fast must stay cheap.
    """
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    width, height = max(1, width), max(1, height)
    image = Image.new("RGB", (width, height), (64, 64, 72))
    draw = ImageDraw.Draw(image)
    border = max(1, min(width, height) // 100)
    draw.rectangle((border, border, width - 1 - border, height - 1 - border),
                   outline=(200, 80, 80), width=border)
    margin = max(4, width // 16)
    size = max(8, min(width, height) // 14)
    font = _font(size)
    text_width = width - 2 * margin
    lines = ["mami: no image", "", *_wrap(describe(reason), font, text_width), "",
             f"({reason})"]
    line_height = int(size * 1.3)
    y = max(border + 2, (height - line_height * len(lines)) // 2)
    for line in lines:
        draw.text((margin, y), line, fill=(235, 235, 235), font=font)
        y += line_height
    meta = PngInfo()
    meta.add_text(PLACEHOLDER_KEY, reason)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=meta)
    return out.getvalue()


def _font(size: int) -> Any:
    """Pillow's bundled scalable font (Pillow >= 10.1 with FreeType) at ``size`` px."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrap(text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current] if current else lines
