"""Exceptions with a user-facing message, and the one JSON error shape the app answers
with (:func:`error_body`, OpenAI's, so its clients understand it)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")

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


def _strip_url(match: re.Match[str]) -> str:
    url = match.group(0)
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed URL (say, an unclosed IPv6 bracket): keep its scheme
        return url.partition("://")[0] + "://..."
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def hide_url_secrets(value: Any) -> Any:
    """``value`` with every URL in its strings (in lists and mappings too) shown without
    user, password, query and fragment, which may hold credentials. Every message mami
    shows goes through it: configuration, ``/health``, error bodies and logs."""
    if isinstance(value, str):
        return URL.sub(_strip_url, value) if "://" in value else value
    if isinstance(value, Mapping):
        return {key: hide_url_secrets(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [hide_url_secrets(item) for item in value]
    return value


def _hidden_arg(value: Any) -> Any:
    if isinstance(value, str):
        return hide_url_secrets(value)
    if isinstance(value, BaseException | Mapping | list | tuple) and "://" in str(value):
        return hide_url_secrets(str(value))  # an exception or a URL object: as text
    return value


def _hide_in_record(record: logging.LogRecord) -> None:
    if isinstance(record.msg, str):
        record.msg = hide_url_secrets(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_hidden_arg(arg) for arg in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {key: _hidden_arg(arg) for key, arg in record.args.items()}
    if record.exc_text:
        record.exc_text = hide_url_secrets(record.exc_text)
    elif record.exc_info and record.exc_info[1] is not None:
        # Formatters reuse exc_text: the traceback is formatted (and hidden) once, here.
        record.exc_text = hide_url_secrets(logging.Formatter().formatException(record.exc_info))


_log_hiding = False


def hide_url_secrets_in_logs() -> None:
    """From now on, every log record of this process shows its URLs the way
    :func:`hide_url_secrets` does (its message, arguments and traceback). Idempotent."""
    global _log_hiding
    if _log_hiding:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _hide_in_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _log_hiding = True


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
    return {"error": {"message": hide_url_secrets(message),
                      "type": ERROR_TYPES.get(status, fallback),
                      "param": param, "code": code, **extra}}


class MamiError(Exception):
    """Base class. ``status_code`` is the HTTP status the app answers with; ``param``
    names the offending request field and ``code`` is a short machine-readable string
    (both optional, as in OpenAI's error objects)."""

    status_code = 500
    code: str | None = None

    def __init__(self, message: str, *, status_code: int | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        message = hide_url_secrets(message)
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
