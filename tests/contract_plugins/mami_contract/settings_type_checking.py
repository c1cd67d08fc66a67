"""A plugin whose Settings annotation names an import made only for type checkers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core import hookimpl

if TYPE_CHECKING:
    from decimal import Decimal


@dataclass
class Settings:
    rate: Decimal | None = None


@hookimpl
def startup(runtime: Any) -> None:
    return None
