"""``GET /health``: overall status plus one entry per plugin."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, get
from litestar.datastructures import State

from core.api.deps import authenticate, get_runtime
from core.config import hide_url_secrets
from core.errors import MamiError


@get("/health", summary="Health of the app and of every plugin", exclude_from_auth=True)
async def health(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    """Always 200 while the process serves; ``status`` is ``degraded`` when a plugin failed
    or the database cannot be used (``database`` says why, with the path and the fix).
    Providers (and toolsets) that implement ``health()`` add their own details (a
    breaker's state, say); one that reports ``{"status": "degraded", "reason": ...}``
    marks its plugin, and the app, ``degraded``. Without a valid credential (when
    ``[core] auth`` is on) only the status of the app and of each plugin is shown: the
    details name internal hosts."""
    runtime = get_runtime(state)
    report = runtime.health()
    probed = [(runtime.provider_plugin.get(id(provider)), provider)
              for registered in runtime.providers.values() for provider in registered.values()]
    for plugin, provider in [*probed, *runtime.tools.toolsets]:
        probe = getattr(provider, "health", None)
        if probe is None:
            continue
        entry = report["plugins"].get(plugin)
        if entry is None:
            continue
        try:
            entry["health"] = await asyncio.wait_for(probe(), 2.0)
        except Exception as exc:
            entry["health"] = {"status": "unreachable", "error": f"{type(exc).__name__}: {exc}"}
        if entry["health"].get("status") == "degraded" and entry["status"] == "ok":
            entry["status"] = report["status"] = "degraded"
            entry["error"] = entry["health"].get("reason")
    if not await _may_see_details(request, runtime):
        report["plugins"] = {name: {"status": entry["status"]}
                             for name, entry in report["plugins"].items()}
        report["database"] = {"status": report["database"]["status"]}
    return hide_url_secrets(report)  # type: ignore[no-any-return]


async def _may_see_details(request: Request[Any, Any, Any], runtime: Any) -> bool:
    """True with auth off, or for a caller whose credential is valid."""
    if not runtime.config.core.auth:
        return True
    client = request.client.host if request.client else None
    try:
        await authenticate(runtime, dict(request.headers), client)
    except MamiError:
        return False
    return True


routes = [health]
