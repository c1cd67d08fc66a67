"""A plugin whose startup hook raises."""

from __future__ import annotations

from typing import Any

from core import hookimpl


@hookimpl
def startup(runtime: Any) -> None:
    raise RuntimeError("sample plugin failed to start")
