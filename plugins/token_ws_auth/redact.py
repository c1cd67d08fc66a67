"""Keeping secrets out of logs.

Redaction happens when a log record is created, so every handler (uvicorn's access
log, files, test capture) sees the redacted text: tokens, tickets, bearer credentials
and, in uvicorn's access log, whole query strings.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"
SECRET_PATTERNS = (
    (re.compile(r"mami_[0-9a-f]{16}_[A-Za-z0-9_-]+"), REDACTED),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"(?i)(bearer\s+)\S+"), r"\1" + REDACTED),
    (re.compile(r"(?i)((?:token|ticket)=)[^&\s\"']+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s\"'@]+@"), r"\1" + REDACTED + "@"),
)
QUERY = re.compile(r"\?[^\s\"']*")
ACCESS_LOGGERS = ("uvicorn.access",)

_FORMATTER = logging.Formatter()
_installed = False


def redact(text: str) -> str:
    """``text`` with every token, ticket and bearer credential replaced."""
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_arg(value: Any, access: bool) -> Any:
    if value is None or isinstance(value, int | float):
        return value
    text = str(value)
    clean = redact(text)
    if access:
        clean = QUERY.sub("?" + REDACTED, clean)
    # Objects (URLs, headers) keep their type unless they held a secret.
    return clean if clean != text or isinstance(value, str) else value


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record's message, arguments and traceback in place (keeping the
    argument shape, which uvicorn's access formatter unpacks)."""
    access = record.name in ACCESS_LOGGERS
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    elif record.exc_info:
        # Formatters reuse exc_text, so the traceback is formatted (and redacted) once here.
        record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
    if isinstance(record.msg, str):
        record.msg = _redact_arg(record.msg, access)
    if isinstance(record.args, tuple):
        record.args = tuple(_redact_arg(arg, access) for arg in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: _redact_arg(v, access) for k, v in record.args.items()}


def install() -> None:
    """Wrap the process's log record factory once; later calls do nothing."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
