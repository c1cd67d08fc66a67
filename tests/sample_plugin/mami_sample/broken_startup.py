"""A plugin whose startup hook raises (naming a URL with credentials, which mami must
never show)."""

from __future__ import annotations

from typing import Any

from core import hookimpl


@hookimpl
def startup(runtime: Any) -> None:
    raise RuntimeError("sample plugin failed to start: "
                       "http://user:s3cret@gpu.internal:7860/sdapi?key=qwerty is unreachable")
