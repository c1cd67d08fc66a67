"""Strict checks of JSON request bodies, shared by every route that takes one.

Litestar's decoder is lenient: it drops unknown fields (a typo such as ``titel`` would
be lost without a word) and converts ``"3"`` to ``3``. :func:`check_body` refuses both
with a 400 whose ``param`` is the offending field.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from litestar import Request

from core.errors import BadRequest

__all__ = ["check_body", "json_body", "refuse_unknown"]


async def json_body(request: Request[Any, Any, Any]) -> Any:
    """The request's JSON body, ``None`` when it is empty; 400 when it is not JSON."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return await request.json()
    except Exception as exc:
        raise BadRequest("the body is not valid JSON") from exc


def refuse_unknown(body: Mapping[str, Any], known: Iterable[str], where: str = "") -> None:
    """400 naming the fields of ``body`` that are not in ``known`` (and listing the known
    ones); ``where`` prefixes nested fields (``"stream_options."``)."""
    allowed = sorted(known)
    unknown = sorted(str(key) for key in body if key not in allowed)
    if not unknown:
        return
    listed = f"known: {', '.join(allowed)}" if allowed else "this request takes no fields"
    raise BadRequest(f"unknown field{'s' if len(unknown) > 1 else ''}: "
                     f"{', '.join(where + name for name in unknown)} ({listed})",
                     param=where + unknown[0])


def check_body(raw: Any, shape: type) -> dict[str, Any]:
    """``raw`` (a decoded JSON body; ``None`` for none) checked against ``shape``, a
    dataclass whose fields are the known fields and whose annotations their JSON types
    (``str``, ``int``, ``float``, ``bool``, ``list[...]``, ``dict[...]``, optionally
    ``| None``). :class:`BadRequest` with ``param`` set for a body that is not an
    object, an unknown field, a missing required field (one without a default) or a
    value of the wrong JSON type (``"512"`` for an integer). Returns the body."""
    body = {} if raw is None else raw
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {_kind_of(body)}")
    fields = dataclasses.fields(shape)
    refuse_unknown(body, (f.name for f in fields))
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in body:
            raise BadRequest(f"{f.name}: required", param=f.name)
    hints = typing.get_type_hints(shape)
    for name, value in body.items():
        expected, accepts = _json_kind(hints[name])
        if not accepts(value):
            raise BadRequest(f"{name}: expected {expected}, got {_kind_of(value)}", param=name)
    return body


_KINDS: dict[Any, tuple[str, Any]] = {
    str: ("a string", lambda v: isinstance(v, str)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    list: ("a list", lambda v: isinstance(v, list)),
    dict: ("an object", lambda v: isinstance(v, dict)),
}


def _json_kind(hint: Any) -> tuple[str, Any]:
    """What a field's annotation accepts: its description and a predicate."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    name, accepts = _KINDS.get(typing.get_origin(base) or base, ("a value", lambda v: True))
    if not optional:
        return name, accepts
    return f"{name} or null", lambda v: v is None or accepts(v)


def _kind_of(value: Any) -> str:
    names = {bool: "true or false", str: "a string", int: "an integer", float: "a number",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
