"""Short-lived WebSocket tickets: compact, HMAC-signed, JWT-shaped.

A ticket is ``base64url(header).base64url(payload).base64url(signature)``. Only the
configured algorithm is accepted; the header's ``alg`` is checked against it before
anything else, so ``none`` or a different HMAC cannot slip through.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
TICKET_TYPE = "mami-ws"


class TicketError(Exception):
    """The ticket is malformed, wrongly signed, of another algorithm or expired."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """The verified claims of a ticket."""

    owner: str
    token_id: str | None
    ticket_id: str
    expires_at: float


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise TicketError("malformed ticket") from exc


def sign(key: bytes, alg: str, payload: dict[str, Any]) -> str:
    """Sign ``payload`` with ``alg`` (one of :data:`ALGORITHMS`)."""
    header = _b64encode(json.dumps({"alg": alg, "typ": TICKET_TYPE}).encode())
    body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    signature = hmac.new(key, signing_input, ALGORITHMS[alg]).digest()
    return f"{header}.{body}.{_b64encode(signature)}"


def issue(key: bytes, alg: str, owner: str, token_id: str | None, ttl: float) -> tuple[str, Ticket]:
    """A fresh ticket for ``owner`` that expires ``ttl`` seconds from now."""
    claims = Ticket(owner, token_id, secrets.token_urlsafe(16), time.time() + ttl)
    payload = {"sub": claims.owner, "tid": claims.token_id, "jti": claims.ticket_id,
               "exp": claims.expires_at}
    return sign(key, alg, payload), claims


def verify(key: bytes, alg: str, ticket: str, now: float | None = None) -> Ticket:
    """The claims of a ticket signed with ``key`` and exactly ``alg``, not yet expired.

    Raises :class:`TicketError` otherwise. Single use is the caller's job.
    """
    parts = ticket.split(".")
    if not ticket.isascii() or len(parts) != 3 or not all(parts[:2]):
        raise TicketError("malformed ticket")
    try:
        header = json.loads(_b64decode(parts[0]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TicketError("malformed ticket") from exc
    if not isinstance(header, dict) or header.get("alg") != alg or alg not in ALGORITHMS:
        raise TicketError("ticket algorithm not accepted")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode("ascii"), ALGORITHMS[alg]).digest()
    if not hmac.compare_digest(expected, _b64decode(parts[2])):
        raise TicketError("bad ticket signature")
    try:
        payload = json.loads(_b64decode(parts[1]))
        claims = Ticket(str(payload["sub"]), payload.get("tid"), str(payload["jti"]),
                        float(payload["exp"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise TicketError("malformed ticket") from exc
    if claims.expires_at <= (time.time() if now is None else now):
        raise TicketError("ticket expired")
    return claims
