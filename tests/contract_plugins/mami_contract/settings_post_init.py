"""A plugin whose Settings.__post_init__ has a bug (not a config error)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import hookimpl


@dataclass
class Settings:
    size: int = 3

    def __post_init__(self) -> None:
        self.halves = {}["size"]  # a bug: KeyError


@hookimpl
def startup(runtime: Any) -> None:
    return None
