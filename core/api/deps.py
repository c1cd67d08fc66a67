"""Dependencies shared by route handlers: the runtime and the calling principal."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State

from core.errors import AuthError, PluginUnavailable
from core.protocols import Principal
from core.runtime import Runtime
from core.security import PRINCIPAL_KEY

MAX_OFFSET = 2**63 - 1
"""The largest ``offset`` a page may ask for: what a database's 64-bit integer holds."""


def get_runtime(state: State) -> Runtime:
    return state.runtime  # type: ignore[no-any-return]


async def authenticate(runtime: Runtime, headers: dict[str, str], client: str | None) -> Principal:
    """The caller, from the verified credential only. With ``[core] auth = false`` every
    caller is ``[core] local_owner``."""
    if not runtime.config.core.auth:
        return Principal(owner=runtime.config.core.local_owner)
    authenticator = runtime.authenticator
    if authenticator is None:
        raise PluginUnavailable(
            "authentication is required ([core] auth = true) but no authenticator plugin "
            "is running"
        )
    principal = await authenticator.authenticate_http(headers, client)
    if principal is None:
        raise AuthError("not authenticated")
    return principal


async def provide_principal(request: Request, state: State) -> Principal:  # type: ignore[type-arg]
    """The caller: the one :class:`core.security.RequireAuth` authenticated, or (on a
    route that opted out with ``exclude_from_auth`` yet asks for it) authenticated here."""
    known = request.scope.get(PRINCIPAL_KEY)
    if isinstance(known, Principal):
        return known
    client = request.client.host if request.client else None
    principal = await authenticate(get_runtime(state), dict(request.headers), client)
    request.scope[PRINCIPAL_KEY] = principal  # type: ignore[literal-required]
    return principal


async def provide_runtime(state: State) -> Runtime:
    return get_runtime(state)
