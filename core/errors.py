"""Exceptions with a user-facing message, and the one JSON error shape the app answers
with (:func:`error_body`, OpenAI's, so its clients understand it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


@dataclass
class ErrorObject:
    """OpenAI's error object (documentation of :func:`error_body`'s shape)."""

    message: str
    type: str
    param: str | None
    code: str | None


@dataclass
class ErrorBody:
    """Every error response's body."""

    error: ErrorObject


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None, **extra: Any) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``: OpenAI's error object, with
    ``code`` a short string or ``null`` (never the HTTP status) and ``param`` the
    offending request field or ``null``. ``extra`` keys (such as ``conversation_id``)
    are added to the error object."""
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, fallback),
                      "param": param, "code": code, **extra}}


class MamiError(Exception):
    """Base class. ``status_code`` is the HTTP status the app answers with; ``param``
    names the offending request field and ``code`` is a short machine-readable string
    (both optional, as in OpenAI's error objects)."""

    status_code = 500
    code: str | None = None

    def __init__(self, message: str, *, status_code: int | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code


class ConfigError(MamiError):
    """plugins.toml or the environment is wrong; the message names the file, table and key."""


class NotFound(MamiError):
    status_code = 404
    code = "not_found"


class BadRequest(MamiError):
    status_code = 400


class PayloadTooLarge(MamiError):
    status_code = 413
    code = "request_too_large"


class AuthError(MamiError):
    """401 (not authenticated) or 403 (forbidden)."""

    status_code = 401


class ProviderError(MamiError):
    """An LLM provider failed before producing any token."""

    status_code = 502


class StreamInterrupted(ProviderError):
    """A stream broke after it started; ``partial`` holds what arrived."""

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


class PluginUnavailable(MamiError):
    """The feature's plugin is disabled or failed to start."""

    status_code = 503



class DatabaseUnavailable(MamiError):
    """The database cannot be read or written (its file is missing or read-only); the
    message names the path and the fix. Clears by itself once the fault is repaired."""

    status_code = 503


class DatabaseMissing(ConfigError):
    """At start: the SQLite file is gone while data that needs it is still there."""
