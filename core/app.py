"""The Litestar app factory."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ImproperlyConfiguredException, ValidationException
from litestar.handlers import WebsocketRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from core.api import ROUTE_MODULES
from core.api.deps import provide_principal, provide_runtime
from core.config import Config, load_config
from core.errors import MamiError
from core.plugins import Candidate
from core.runtime import Runtime

log = logging.getLogger("mami")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def error_body(status: int, message: str, details: Any = None) -> dict[str, Any]:
    """The one error shape of every endpoint (OpenAI's, so its clients understand it)."""
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    error: dict[str, Any] = {
        "message": message,
        "type": ERROR_TYPES.get(status, fallback),
        "code": status,
    }
    if details:
        error["details"] = details
    return {"error": error}


def _mami_error(_: Request[Any, Any, Any], exc: MamiError) -> Response[Any]:
    return Response(error_body(exc.status_code, exc.message), status_code=exc.status_code)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    details = exc.extra if isinstance(exc, ValidationException) else None
    return Response(
        error_body(exc.status_code, exc.detail, details),
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error", exc_info=exc)
    return Response(
        error_body(500, "internal server error"), status_code=HTTP_500_INTERNAL_SERVER_ERROR
    )


def collect_routes(runtime: Runtime) -> tuple[list[Any], list[tuple[str, list[Any]]]]:
    """Core routes, and each enabled plugin's routes from ``register_routes``."""
    core: list[Any] = []
    for module_name in ROUTE_MODULES:
        core.extend(importlib.import_module(module_name).routes)
    extra = [(plugin, list(handlers or []))
             for plugin, handlers in runtime.plugins.call_each("register_routes", runtime=runtime)]
    return core, extra


def _for_deployment(handlers: list[Any], serverless: bool) -> list[Any]:
    if serverless:  # Mangum speaks HTTP only: no WebSocket routes on Lambda
        return [h for h in handlers if not isinstance(h, WebsocketRouteHandler)]
    return handlers


def create_app(
    config: Config | None = None,
    *,
    candidates: list[Candidate] | None = None,
    serverless: bool = False,
) -> Litestar:
    """Build an app with its own plugin manager and runtime.

    ``serverless`` (Lambda) skips the lifespan: the runtime starts on the first
    request, and nothing runs in the background after a response.
    """
    runtime = Runtime(config or load_config(), candidates, serverless=serverless)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.ensure_started()
        from core.jobs import start_image_worker

        worker = start_image_worker(runtime)  # None unless [core] image_worker
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await runtime.stop()

    async def start_lazily(request: Request[Any, Any, Any]) -> None:
        await runtime.ensure_started()

    def build(handlers: list[Any]) -> Litestar:
        return Litestar(
            route_handlers=_for_deployment(handlers, serverless),
            state=State({"runtime": runtime}),
            dependencies={
                "runtime": Provide(provide_runtime),
                "principal": Provide(provide_principal),
            },
            lifespan=[] if serverless else [lifespan],
            before_request=start_lazily,
            exception_handlers={
                MamiError: _mami_error,
                HTTPException: _http_error,
                Exception: _unexpected_error,
            },
            openapi_config=OpenAPIConfig(title="mami", version="0.1.0", path="/schema"),
            cors_config=CORSConfig(allow_origins=[]),
            debug=False,
        )

    core, extra = collect_routes(runtime)
    try:
        return build(core + [h for _plugin, handlers in extra for h in handlers])
    except ImproperlyConfiguredException:
        # Find the plugin(s) whose routes Litestar rejects; the app runs without them.
        accepted = list(core)
        for plugin, handlers in extra:
            try:
                build(accepted + handlers)
            except ImproperlyConfiguredException as exc:
                runtime.plugins.fail(plugin, f"routes rejected: {exc.detail}")
                continue
            accepted.extend(handlers)
        return build(accepted)


def runtime_of(app: Litestar) -> Runtime:
    """The :class:`Runtime` of an app made by :func:`create_app`."""
    return app.state.runtime  # type: ignore[no-any-return]
