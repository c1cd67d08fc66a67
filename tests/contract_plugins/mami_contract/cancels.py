"""An event subscriber that raises CancelledError on its own."""

from __future__ import annotations

import asyncio
from typing import Any

from core import hookimpl


@hookimpl
async def image_finished(event: Any) -> None:
    raise asyncio.CancelledError


@hookimpl
async def message_completed(event: Any) -> None:
    raise asyncio.CancelledError
