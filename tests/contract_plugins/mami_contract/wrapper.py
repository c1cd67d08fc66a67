"""A hook wrapper, which mami refuses."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from core import hookimpl


@hookimpl(wrapper=True)
def register_llm_providers(register: Any, runtime: Any) -> Generator[None, Any, Any]:
    return (yield)
