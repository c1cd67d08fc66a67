"""The server's checkpoints, samplers and schedulers, cached, so that a request naming
one it does not have fails before any generation call (and never counts against the
server)."""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

log = logging.getLogger("mami.forge_image.catalog")

PATHS = {"checkpoint": "/sdapi/v1/sd-models", "sampler": "/sdapi/v1/samplers",
         "scheduler": "/sdapi/v1/schedulers"}
REFRESH_AFTER_MISS = 10.0
"""At most one list request per kind in this many seconds, however many misses."""

Fetch = Callable[[str, float], Awaitable[Any]]


class Catalog:
    """Names the server accepts, per kind, fetched on first use and again on a miss
    (rate-limited). When a list cannot be fetched (server down, or too old to have
    ``/schedulers``) nothing is refused: the generation call will tell."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self.names: dict[str, dict[str, str]] = {}
        """kind -> accepted name -> the name to show (its canonical form)."""
        self.fetched_at: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def lookup(self, kind: str, name: str, timeout: float) -> list[str] | None:
        """``None`` when ``name`` is known (or cannot be checked); otherwise the names
        the server has, to show in the error."""
        if self._accepts(kind, name):
            return None
        async with self._lock:
            last = self.fetched_at.get(kind)
            if last is None or time.monotonic() - last >= REFRESH_AFTER_MISS:
                await self._refresh(kind, timeout)
                if kind == "sampler":  # "DPM++ 2M Karras" = sampler + scheduler label
                    await self._refresh("scheduler", timeout)
        if self._accepts(kind, name) is not False:
            return None
        return sorted(set(self.names[kind].values()))

    def _accepts(self, kind: str, name: str) -> bool | None:
        names = self.names.get(kind)
        if names is None:
            return None
        if name in names:
            return True
        if kind == "sampler":
            for label in self.names.get("scheduler", {}):
                if name.endswith(" " + label) and name[: -len(label) - 1] in names:
                    return True
        return False

    async def _refresh(self, kind: str, timeout: float) -> None:
        self.fetched_at[kind] = time.monotonic()
        try:
            items = await self.fetch(PATHS[kind], timeout)
        except (httpx.HTTPError, ValueError) as exc:
            log.info("could not list %ss: %s", kind, exc)
            return
        if not isinstance(items, list):
            return
        self.names[kind] = _names(kind, items)


def _names(kind: str, items: list[Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        if kind == "checkpoint":
            title = str(item.get("title") or "")
            shown = title.split(" [")[0] or str(item.get("model_name") or "")
            filename = posixpath.basename(str(item.get("filename") or "").replace("\\", "/"))
            keys = [title, title.split(" [")[0], item.get("model_name"), item.get("hash"),
                    item.get("sha256"), filename, posixpath.splitext(filename)[0]]
        else:
            shown = str(item.get("label" if kind == "scheduler" else "name") or "")
            keys = [item.get("name"), item.get("label"), *(item.get("aliases") or [])]
        for key in keys:
            if isinstance(key, str) and key:
                names[key] = shown
    return names
