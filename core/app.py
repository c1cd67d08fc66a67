"""The Litestar app factory."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ImproperlyConfiguredException, ValidationException
from litestar.handlers import HTTPRouteHandler, WebsocketRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from core.api import ROUTE_MODULES
from core.api.deps import provide_principal, provide_runtime
from core.config import Config, load_config
from core.errors import ErrorBody, MamiError, error_body
from core.plugins import Candidate
from core.runtime import Runtime
from core.security import guards

log = logging.getLogger("mami")

MAX_BODY_BYTES = 10 * 1024 * 1024
"""Request bodies over this are refused with a 413 while they are read."""

STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
                429: "rate_limit_exceeded"}


def _mami_error(_: Request[Any, Any, Any], exc: MamiError) -> Response[Any]:
    return Response(error_body(exc.status_code, exc.message, param=exc.param, code=exc.code),
                    status_code=exc.status_code)


def _validation_param(exc: ValidationException) -> tuple[str | None, str]:
    """The first offending field of a Litestar validation error, and a message naming
    every one of them."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    keys = [str(p.get("key")) for p in problems if isinstance(p, dict) and p.get("key")]
    details = "; ".join(f"{p.get('key')}: {p.get('message')}" for p in problems
                        if isinstance(p, dict))
    return (keys[0] if keys else None), (f"{exc.detail} ({details})" if details else exc.detail)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    param, message = None, exc.detail
    if isinstance(exc, ValidationException):
        param, message = _validation_param(exc)
    if exc.status_code == 413:
        message = f"the request body is over the limit of {MAX_BODY_BYTES} bytes"
    return Response(
        error_body(exc.status_code, message, param=param,
                   code=STATUS_CODES.get(exc.status_code)),
        status_code=exc.status_code,
        headers=exc.headers,
    )


PLUGIN_OPT = "mami.plugin"
"""The ``opt`` key naming the plugin whose ``register_routes`` returned a handler."""


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    handler = request.scope.get("route_handler")
    plugin = (getattr(handler, "opt", None) or {}).get(PLUGIN_OPT)
    where = f"{request.method} {request.url.path}"
    if plugin:
        log.exception("unhandled error in a route of plugin %s (%s)", plugin, where,
                      exc_info=exc)
    else:
        log.exception("unhandled error (%s)", where, exc_info=exc)
    return Response(
        error_body(500, "internal server error"), status_code=HTTP_500_INTERNAL_SERVER_ERROR
    )


ERROR_RESPONSE = ResponseSpec(data_container=ErrorBody, generate_examples=False,
                              description="An error in OpenAI's shape")


def document_errors(app: Litestar) -> None:
    """Document every HTTP operation's errors with the shape they really have (Litestar
    would otherwise describe its own validation error body)."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler):
                ranges: dict[Any, ResponseSpec] = {"4XX": ERROR_RESPONSE, "5XX": ERROR_RESPONSE}
                handler.responses = {400: ERROR_RESPONSE, **ranges, **(handler.responses or {})}


def collect_routes(runtime: Runtime) -> tuple[list[Any], list[tuple[str, list[Any]]]]:
    """Core routes, and each enabled plugin's routes from ``register_routes``."""
    core: list[Any] = []
    for module_name in ROUTE_MODULES:
        core.extend(importlib.import_module(module_name).routes)
    return core, runtime.plugins.register_routes(runtime)


def _for_deployment(handlers: list[Any], serverless: bool) -> list[Any]:
    if serverless:  # Mangum speaks HTTP only: no WebSocket routes on Lambda
        return [h for h in handlers if not isinstance(h, WebsocketRouteHandler)]
    return handlers


def _of_plugin(plugin: str, handlers: list[Any], serverless: bool) -> list[Any]:
    """A plugin's handlers in a router at the root whose ``opt`` names the plugin (so an
    error in one of its routes is logged with its name)."""
    kept = _for_deployment(handlers, serverless)
    return [Router("/", route_handlers=kept, opt={PLUGIN_OPT: plugin})] if kept else []


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
        from core.chat import keep_finishing_abandoned
        from core.jobs import start_image_worker

        worker = start_image_worker(runtime)  # None unless [core] image_worker
        sweeper = asyncio.create_task(keep_finishing_abandoned(runtime))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if worker is not None:
                await worker.stop()
            await runtime.stop()

    async def start_lazily(request: Request[Any, Any, Any]) -> None:
        await runtime.ensure_started()

    def build(core: list[Any], extra: list[tuple[str, list[Any]]]) -> Litestar:
        handlers = list(_for_deployment(core, serverless))
        for plugin, mine in extra:
            handlers.extend(_of_plugin(plugin, mine, serverless))
        app = Litestar(
            route_handlers=handlers,
            state=State({"runtime": runtime}),
            dependencies={
                "runtime": Provide(provide_runtime),
                "principal": Provide(provide_principal),
            },
            lifespan=[] if serverless else [lifespan],
            before_request=start_lazily,
            middleware=guards(runtime, MAX_BODY_BYTES),
            exception_handlers={
                MamiError: _mami_error,
                HTTPException: _http_error,
                Exception: _unexpected_error,
            },
            openapi_config=OpenAPIConfig(title="mami", version="0.1.0", path="/schema"),
            cors_config=CORSConfig(allow_origins=[]),
            request_max_body_size=MAX_BODY_BYTES,
            debug=False,
        )
        document_errors(app)
        return app

    core, extra = collect_routes(runtime)
    try:
        return build(core, extra)
    except ImproperlyConfiguredException:
        # Find the plugin(s) whose routes Litestar rejects; the app runs without them.
        accepted: list[tuple[str, list[Any]]] = []
        for plugin, handlers in extra:
            try:
                build(core, [*accepted, (plugin, handlers)])
            except ImproperlyConfiguredException as exc:
                runtime.plugins.fail(plugin, f"routes rejected: {exc.detail}")
                continue
            accepted.append((plugin, handlers))
        return build(core, accepted)


def runtime_of(app: Litestar) -> Runtime:
    """The :class:`Runtime` of an app made by :func:`create_app`."""
    return app.state.runtime  # type: ignore[no-any-return]
