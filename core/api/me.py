"""``GET /api/me``: who the page is signed in as."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from litestar import get

from core.protocols import Principal
from core.runtime import Runtime


@dataclass
class Me:
    """The caller: ``owner``; the credential's ``token_name`` and ``expires_at`` (both
    ``null`` without one, as with ``[core] auth = false``); whether ``auth`` is on; and
    ``default_model``, the model a conversation without its own uses (``null``: none)."""

    owner: str
    token_name: str | None
    expires_at: datetime | None
    auth: bool
    default_model: str | None = None


@get("/api/me", tags=["auth"], summary="The signed-in owner and credential")
async def me(runtime: Runtime, principal: Principal) -> Me:
    """The caller. An authenticator may name the credential with an optional
    ``async credential_name(principal) -> str | None``."""
    name = None
    describe = getattr(runtime.authenticator, "credential_name", None)
    if describe is not None and principal.credential_id is not None:
        name = await describe(principal)
    return Me(principal.owner, name, principal.expires_at, runtime.config.core.auth,
              getattr(runtime.llm, "name", None))


routes = [me]
