"""A plugin whose Settings is a plain class."""

from __future__ import annotations

from typing import Any

from core import hookimpl


class Settings:
    greeting: str = "hi"


@hookimpl
def startup(runtime: Any) -> None:
    return None
