"""``mami chat "text" [--owner NAME] [--conversation ID]``: one turn, streamed to the
terminal, in-process (no server needed). Ctrl-C stores the reply so far as interrupted.

What goes where, plain text only:

- stdout: the reply as it streams, then, when document passages were given to the
  model, a blank line, ``Sources:`` and one line per passage, numbered as the reply
  cites them (:func:`source_line`); so ``mami chat ... > answer.txt`` keeps the
  citations readable;
- stderr: each tool call of a server-side tool step as it starts and as it ends
  (:func:`call_line`, :func:`result_line`), shown between the question and the answer,
  and the conversation id at the end, so ``--conversation`` can continue it; before
  the answer, ``[warning] ...`` for each thing it has to do without (``documents
  unavailable: <reason>``, ``memories unavailable: <reason>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core import hookimpl

if TYPE_CHECKING:
    from core.protocols import ToolCall
    from core.tools import ToolResult

ARGUMENTS_WIDTH = 80
RESULT_WIDTH = 100
EXCERPT_WIDTH = 60


def cmd_chat(args: argparse.Namespace) -> int:
    """Send one message and stream the answer to the terminal."""
    if not getattr(args, "debug", False) and logging.getLogger().level >= logging.INFO:
        # Between the question and the answer: no line per model request, and a failed
        # tool call once (its [tool] line), not twice.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("mami.tools").setLevel(logging.ERROR)
    return asyncio.run(_chat(args))


def shortened(text: str, width: int) -> str:
    """``text`` on one line (runs of whitespace made one space), cut to at most
    ``width`` characters with ``...`` when longer (at a space when there is one in the
    second half)."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    cut = flat[:width - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > width // 2 else cut).rstrip() + "..."


def call_line(call: ToolCall) -> str:
    """``[tool] name(key=value, ...)``: a tool call as it starts, its arguments as the
    model gave them (values in JSON), shortened."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = None
    if isinstance(arguments, dict):
        shown = ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}"
                          for key, value in arguments.items())
    else:
        shown = call.arguments
    return f"[tool] {call.name}({shortened(shown, ARGUMENTS_WIDTH)})"


def result_line(result: ToolResult) -> str:
    """``[tool] name ok (12 ms): result`` or ``[tool] name error (3 ms): message``: a
    call as it ends, its result shortened (an error's message unwrapped)."""
    content = result.content
    if result.is_error:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            content = str(json.loads(content)["error"])
    took = (f"{result.duration * 1000:.0f} ms" if result.duration < 1
            else f"{result.duration:.1f} s")
    status = "error" if result.is_error else "ok"
    return f"[tool] {result.name} {status} ({took}): {shortened(content, RESULT_WIDTH)}"


def source_line(source: Mapping[str, Any]) -> str:
    """``[n] name, page p, chunk c: "excerpt"``: one source of the reply (a document
    passage given to the model). The page is shown for paged documents (PDF); the chunk
    is the passage's place in its document, counted from 1."""
    where = [str(source.get("source") or source.get("document_id") or "?")]
    if source.get("page") is not None:
        where.append(f"page {source['page']}")
    if isinstance(source.get("chunk_index"), int):
        where.append(f"chunk {source['chunk_index'] + 1}")
    line = f"[{source.get('n', '?')}] {', '.join(where)}"
    excerpt = shortened(str(source.get("text") or ""), EXCERPT_WIDTH)
    return f'{line}: "{excerpt}"' if excerpt else line


async def _chat(args: argparse.Namespace) -> int:
    from core.chat import ChatRequest, Finished, start_turn
    from core.config import load_config
    from core.errors import MamiError
    from core.protocols import Principal, ToolCall
    from core.runtime import Runtime
    from core.tools import ToolResult

    config = load_config(args.config)
    runtime = Runtime(config)
    runtime.repair_on_start = False  # one turn: no start-up repairs, no first admin token
    await runtime.ensure_started()
    try:
        principal = Principal(owner=args.owner or config.core.local_owner)
        request = ChatRequest(args.text, conversation_id=args.conversation)
        turn = await start_turn(runtime, principal, request)
        for warning in turn.warnings:
            print(f"[warning] {warning}", file=sys.stderr, flush=True)
        finished: Finished | None = None
        line_open = False  # stdout holds text not yet ended by a newline
        async for item in turn.run():
            if isinstance(item, Finished):
                finished = item
                sys.stdout.write("\n")
                sys.stdout.flush()
            elif isinstance(item, str):
                sys.stdout.write(item)
                sys.stdout.flush()
                line_open = not item.endswith("\n")
            elif isinstance(item, ToolCall | ToolResult):
                if line_open:  # the step's own text: end its line before the tool's
                    sys.stdout.write("\n")
                    sys.stdout.flush()
                    line_open = False
                line = call_line(item) if isinstance(item, ToolCall) else result_line(item)
                print(line, file=sys.stderr, flush=True)
        if turn.sources and finished is not None and finished.text:
            print("\nSources:")
            for source in turn.sources:
                print(source_line(source))
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
