"""A hook implementation whose author forgot ``@hookimpl``: pluggy ignores it."""

from __future__ import annotations

from typing import Any

from litestar import get


@get("/undecorated")
async def hello() -> dict[str, str]:
    return {"hello": "never mounted"}


def register_routes(runtime: Any) -> list[Any]:
    return [hello]
