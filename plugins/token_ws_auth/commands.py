"""``mami token create|list|revoke``."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from core.errors import NotFound
from plugins.token_ws_auth import tokens


def add_token_command(subparsers: Any) -> None:
    parser = subparsers.add_parser("token", help="create, list and revoke API tokens",
                                   description="Manage API tokens (shown once, stored hashed).")
    actions = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a token and print it once")
    create.add_argument("--owner", required=True, help="owner the token acts for")
    create.add_argument("--expires", help="lifetime such as 30d, 12h or 15m (default: never)")
    create.add_argument("--name", default="", help="a label")
    listing = actions.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--owner", help="only this owner's tokens")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = actions.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", help="token id as shown by `mami token list`")
    parser.set_defaults(func=run_token_command)


def run_token_command(args: argparse.Namespace) -> int:
    actions: dict[str, Callable[[Any, argparse.Namespace], Awaitable[int]]] = {
        "create": _create, "list": _list, "revoke": _revoke,
    }
    return asyncio.run(_with_db(args, actions[args.token_command]))


async def _with_db(
    args: argparse.Namespace, action: Callable[[Any, argparse.Namespace], Awaitable[int]]
) -> int:
    from core.config import load_config
    from core.runtime import Runtime

    runtime = Runtime(load_config(args.config))
    try:
        await asyncio.to_thread(runtime.prepare_schema)
        return await action(runtime.db, args)
    finally:
        await runtime.db.close()


async def _create(db: Any, args: argparse.Namespace) -> int:
    lifetime = tokens.parse_duration(args.expires) if args.expires else None
    token, info = await tokens.create_token(db, args.owner, args.name, lifetime)
    print(f"token {info.id} for {info.owner}, expires {info.expires_at or 'never'}")
    print("It is shown only now:")
    print(token)
    return 0


async def _list(db: Any, args: argparse.Namespace) -> int:
    found = await tokens.list_tokens(db, args.owner)
    if args.json:
        print(json.dumps([info.as_dict() for info in found], indent=2))
        return 0
    for info in found:
        state = "revoked" if info.revoked_at else (
            "expired" if info.expires_at and info.expires_at <= tokens.now() else "active")
        expires = info.expires_at.isoformat(timespec="seconds") if info.expires_at else "never"
        print(f"{info.id}  {info.owner:<20} {state:<8} expires {expires}  {info.name}")
    return 0


async def _revoke(db: Any, args: argparse.Namespace) -> int:
    info = await tokens.revoke_token(db, args.id)
    if info is None:  # on stderr, in one line, like every other CLI error
        raise NotFound(f"no token {args.id!r} (see `mami token list`)")
    print(f"revoked token {info.id} of {info.owner}")
    return 0
