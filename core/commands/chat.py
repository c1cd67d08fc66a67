"""``mami chat "text" [--owner NAME] [--conversation ID]``: one turn, streamed to the
terminal, in-process (no server needed). The reply goes to stdout; the conversation id
to stderr, so ``--conversation`` can continue it. Ctrl-C stores the reply so far as
interrupted."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from core import hookimpl


def cmd_chat(args: argparse.Namespace) -> int:
    """Send one message and stream the answer to the terminal."""
    return asyncio.run(_chat(args))


async def _chat(args: argparse.Namespace) -> int:
    from core.chat import ChatRequest, Finished, start_turn
    from core.config import load_config
    from core.errors import MamiError
    from core.protocols import Principal
    from core.runtime import Runtime

    config = load_config(args.config)
    runtime = Runtime(config)
    await runtime.ensure_started()
    try:
        principal = Principal(owner=args.owner or config.core.local_owner)
        request = ChatRequest(args.text, conversation_id=args.conversation)
        turn = await start_turn(runtime, principal, request)
        finished: Finished | None = None
        async for item in turn.run():
            if isinstance(item, Finished):
                finished = item
                sys.stdout.write("\n")
                sys.stdout.flush()
            elif isinstance(item, str):
                sys.stdout.write(item)
                sys.stdout.flush()
        print(f"(conversation {turn.conversation_id})", file=sys.stderr)
        if finished is None or finished.status != "complete":
            status = finished.status if finished else "interrupted"
            error = finished.error if finished else None
            raise MamiError(f"the reply ended {status}" + (f": {error}" if error else ""))
    finally:
        await runtime.stop()
    return 0


@hookimpl
def register_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("chat", help="send a message and stream the reply",
                            description=cmd_chat.__doc__)
    parser.add_argument("text", help="the message")
    parser.add_argument("--owner", help="whose conversation (default: [core] local_owner)")
    parser.add_argument("--conversation", metavar="ID", help="continue this conversation")
    parser.set_defaults(func=cmd_chat)
