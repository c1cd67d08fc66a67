"""A synchronous subscriber that blocks (a slow webhook call, say) far past any timeout."""

from __future__ import annotations

import threading
from typing import Any

from core import hookimpl

RELEASE = threading.Event()


@hookimpl
def image_finished(event: Any) -> None:
    RELEASE.wait(120)


@hookimpl
def message_completed(event: Any) -> None:
    RELEASE.wait(120)
