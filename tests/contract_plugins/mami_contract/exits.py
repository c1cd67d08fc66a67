"""An event subscriber that calls sys.exit."""

from __future__ import annotations

import sys
from typing import Any

from core import hookimpl


@hookimpl
def image_finished(event: Any) -> None:
    sys.exit(3)


@hookimpl
async def message_completed(event: Any) -> None:
    raise SystemExit(3)
