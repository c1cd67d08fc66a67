"""Exceptions with a user-facing message. The app maps them to JSON errors."""

from __future__ import annotations


class MamiError(Exception):
    """Base class. ``status_code`` is the HTTP status the app answers with."""

    status_code = 500

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class ConfigError(MamiError):
    """plugins.toml or the environment is wrong; the message names the file, table and key."""


class NotFound(MamiError):
    status_code = 404


class BadRequest(MamiError):
    status_code = 400


class PayloadTooLarge(MamiError):
    status_code = 413


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

