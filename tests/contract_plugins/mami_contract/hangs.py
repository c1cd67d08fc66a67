"""A startup that waits forever (on a server that never answers, say). With
``MAMI_CONTRACT_STUBBORN`` set it also ignores cancellation."""

from __future__ import annotations

import asyncio
import logging
import os

from core import hookimpl


@hookimpl
async def startup() -> None:
    logging.getLogger("mami_contract").warning("hangs: startup waits forever")
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if not os.environ.get("MAMI_CONTRACT_STUBBORN"):
                raise
