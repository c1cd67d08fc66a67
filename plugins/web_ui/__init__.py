"""web-ui: the chat page for self-hosters, served by ``mami serve`` at ``/``.

Plain HTML, CSS and JavaScript shipped in this package (``static/``): no build step,
nothing fetched at run time. The page signs in with the token from the URL printed at
first start (``/?token=...``), then talks to the native API and ``/ws/chat``. Every
response of the page carries a Content-Security-Policy that allows only this origin
(plus ``blob:`` images, which the page makes itself from authenticated downloads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import hookimpl
from core.runtime import Runtime

PLUGIN = "web-ui"


@dataclass
class Settings:
    """``[plugins.web-ui]``."""

    title: str = "mami"
    """Name shown in the browser tab and the page header."""


@hookimpl
def register_routes(runtime: Runtime) -> list[Any]:
    from plugins.web_ui.routes import page_routes

    return page_routes(runtime.settings(PLUGIN) or Settings())
