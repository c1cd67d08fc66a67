"""Records every event it is given, from a synchronous and an asynchronous subscriber."""

from __future__ import annotations

import threading
from typing import Any

from core import hookimpl

EVENTS: list[str] = []
THREADS: list[str] = []


@hookimpl
def image_finished(event: Any, runtime: Any) -> None:
    THREADS.append(threading.current_thread().name)
    EVENTS.append(f"image_finished:{event.job_id}:{event.state}")


@hookimpl
async def message_completed(event: Any, runtime: Any) -> None:
    EVENTS.append(f"message_completed:{event.message_id}")
