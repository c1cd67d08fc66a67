"""Log redaction, formatted the way handlers format records."""

from __future__ import annotations

import io
import logging

from core.errors import hide_url_secrets_in_logs
from plugins.token_ws_auth import redact

TOKEN = "mami_0123456789abcdef_" + "S" * 43
TICKET = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def formatted(logger_name: str, msg: str, *args: object, exc: BaseException | None = None) -> str:
    hide_url_secrets_in_logs()  # what every mami runtime installs
    redact.install()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    try:
        if exc is not None:
            try:
                raise exc
            except BaseException:
                logger.exception(msg, *args)
        else:
            logger.info(msg, *args)
    finally:
        logger.removeHandler(handler)
        logger.level = old_level
    return stream.getvalue()


def test_message_arguments_and_objects_are_redacted() -> None:
    class Url:
        def __str__(self) -> str:
            return f"http://x/api?token={TOKEN}"

    text = formatted("mami.test", f"header Bearer {TOKEN} and %s, %s, %d", TICKET, Url(), 3)
    assert TOKEN not in text and TICKET not in text and "Bearer [redacted]" in text
    assert ", 3" in text


def test_access_log_query_strings_are_dropped() -> None:
    text = formatted("uvicorn.access", '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET",
                     "/chat?session=abc&x=1", "1.1", 200)
    assert '"GET /chat?[redacted] HTTP/1.1" 200' in text


def test_tracebacks_are_redacted() -> None:
    text = formatted("mami.test", "failed", exc=ValueError(f"bad ticket {TICKET} for {TOKEN}"))
    assert "ValueError: bad ticket [redacted] for [redacted]" in text
    assert TICKET not in text and TOKEN not in text


def test_ordinary_text_is_kept_and_urls_lose_their_query() -> None:
    text = formatted("mami.test", "what is 2+2? see https://example.com/a?b=c")
    assert "what is 2+2? see https://example.com/a\n" in text  # a query may hold a secret


def test_userinfo_in_urls_is_redacted() -> None:
    text = formatted("mami.test", "cannot reach %s", "http://user:pass@gpu:7860/sdapi")
    assert "cannot reach http://gpu:7860/sdapi" in text and "pass" not in text
