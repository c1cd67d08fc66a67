"""An image generator that never returns, and ignores being cancelled until RELEASE is
set (the test sets it when done, so the event loop can close)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from core import hookimpl
from core.protocols import ImageResult

STARTED: list[str] = []
IGNORED: list[str] = []
RELEASE = threading.Event()


class Stuck:
    name = "stuck"

    async def generate(self, request: Any, progress: Any = None) -> ImageResult:
        STARTED.append(request.prompt)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if RELEASE.is_set():
                    raise
                IGNORED.append(request.prompt)


@hookimpl
def register_image_generators(register: Any) -> None:
    register(Stuck())
