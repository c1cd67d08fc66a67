"""Registers a retriever that has no search method."""

from __future__ import annotations

from typing import Any

from core import hookimpl


class HalfRetriever:
    name = "half"

    async def ingest(self, owner: str, source: str, text: str, scope: str = "default") -> Any:
        return None


@hookimpl
def register_retrievers(register: Any) -> None:
    register(HalfRetriever())
