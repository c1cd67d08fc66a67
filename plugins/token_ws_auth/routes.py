"""``/api/tokens`` (an owner's own tokens) and ``/api/ws-ticket``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request, delete, get, post

from core.api.bodies import check_body, json_body
from core.errors import AuthError, NotFound
from core.protocols import Principal
from core.runtime import Runtime
from plugins.token_ws_auth import authenticator_of, tokens
from plugins.token_ws_auth.authenticator import SUBPROTOCOL, TICKET_PREFIX


@dataclass
class TokenCreate:
    """``name``: a label; ``expires_in``: a duration such as ``30d`` (none: never)."""

    name: str = ""
    expires_in: str | None = None


@dataclass
class NoFields:
    """A request that takes no fields: an empty body, or ``{}``."""


@post("/api/tokens", summary="Create an API token for the caller's owner", status_code=201)
async def create_token(data: TokenCreate, principal: Principal, runtime: Runtime,
                       request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The new token is in ``token`` and is shown only in this response. A token that
    expires cannot create one that outlives it. 400 naming the field for an unknown
    field or a value of the wrong JSON type."""
    check_body(await json_body(request), TokenCreate)
    lifetime = tokens.parse_duration(data.expires_in) if data.expires_in else None
    if principal.expires_at is not None and (
        lifetime is None or tokens.now() + lifetime > principal.expires_at
    ):
        raise AuthError("a token cannot create a token that outlives it", status_code=403)
    token, info = await tokens.create_token(runtime.db, principal.owner, data.name, lifetime)
    return {"token": token, **info.as_dict()}


@get("/api/tokens", summary="List the caller's tokens")
async def list_tokens(principal: Principal, runtime: Runtime) -> dict[str, Any]:
    """Facts of the caller's tokens, never their secrets."""
    found = await tokens.list_tokens(runtime.db, principal.owner)
    return {"data": [info.as_dict() for info in found]}


@delete("/api/tokens/{token_id:str}", summary="Revoke one of the caller's tokens",
        status_code=204)
async def revoke_token(token_id: str, principal: Principal, runtime: Runtime) -> None:
    """404 for a token of another owner, as for one that does not exist. Sockets opened
    with the token are closed within seconds."""
    if await authenticator_of(runtime).revoke(token_id, principal.owner) is None:
        raise NotFound(f"no token {token_id!r}")


@post("/api/ws-ticket", summary="Trade the caller's token for a WebSocket ticket",
      status_code=201)
async def ws_ticket(principal: Principal, runtime: Runtime,
                    request: Request[Any, Any, Any]) -> dict[str, Any]:
    """A single-use ticket, valid for ``expires_in`` seconds. Open the socket offering
    the subprotocols in ``protocols``, or send ``ticket`` as the first message. The
    body is empty (or ``{}``): a field is a 400 naming it."""
    check_body(await json_body(request), NoFields)
    ticket, claims = await authenticator_of(runtime).issue_ticket(principal)
    return {
        "ticket": ticket,
        "expires_at": claims.expires_at,
        "expires_in": authenticator_of(runtime).settings.ticket_ttl,
        "protocols": [SUBPROTOCOL, TICKET_PREFIX + ticket],
    }


routes = [create_token, list_tokens, revoke_token, ws_ticket]
