"""The page's routes: ``GET /`` (the page), ``GET /ui/<file>`` (its static files) and
``GET /ui/vendor/<path>`` (the vendored libraries listed in ``static/vendor/README.md``)."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar import Response, get

from core.errors import NotFound

if TYPE_CHECKING:
    from plugins.web_ui import Settings

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor"
ASSETS = {
    "app.js": "text/javascript",
    "markdown.js": "text/javascript",
    "app.css": "text/css",
    "icon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # The first visit carries the token in its URL: never send it anywhere.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def vendor_files() -> frozenset[str]:
    """The vendored scripts by their path under ``vendor/`` (the only ones served)."""
    return frozenset(p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*.js"))


@cache
def read_static(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def page_html(title: str) -> bytes:
    """``index.html`` with the configured title filled in (escaped)."""
    text = read_static("index.html").decode("utf-8")
    return text.replace("__TITLE__", html.escape(title)).encode("utf-8")


def page_routes(settings: Settings) -> list[Any]:
    """Handlers for the page and its files; none of them needs a credential."""
    page = page_html(settings.title)

    @get("/", include_in_schema=False, sync_to_thread=False, exclude_from_auth=True)
    def index() -> Response[bytes]:
        """The chat page."""
        return Response(page, media_type="text/html", headers=HEADERS)

    @get("/ui/{name:str}", include_in_schema=False, sync_to_thread=False,
         exclude_from_auth=True)
    def asset(name: str) -> Response[bytes]:
        """One of the page's own files; anything else is a 404."""
        media_type = ASSETS.get(name)
        if media_type is None:
            raise NotFound(f"no file {name!r}")
        return Response(read_static(name), media_type=media_type, headers=HEADERS)

    @get("/ui/vendor/{name:path}", include_in_schema=False, sync_to_thread=False,
         exclude_from_auth=True)
    def vendor(name: str) -> Response[bytes]:
        """A vendored library (Markdown, sanitiser, highlighter); anything else is a 404."""
        name = name.lstrip("/")
        if name not in vendor_files():
            raise NotFound(f"no file {name!r}")
        return Response(read_static(f"vendor/{name}"), media_type="text/javascript",
                        headers=HEADERS)

    @get("/favicon.ico", include_in_schema=False, sync_to_thread=False,
         exclude_from_auth=True)
    def favicon() -> Response[bytes]:
        """Browsers ask for it whatever the page says."""
        return Response(read_static("icon.svg"), media_type=ASSETS["icon.svg"], headers=HEADERS)

    return [index, asset, vendor, favicon]
