"""WebSocket chat at ``/ws/chat``: one socket, many turns, streamed deltas, cancel.

Authentication happens before any message is read: with ``[core] auth = false`` the
socket is accepted for ``[core] local_owner``; otherwise the active authenticator's
``accept_websocket`` verifies and accepts it (or closes it itself). Without a running
authenticator the socket is accepted and closed with 1013 "authentication
unavailable". While the socket lives, ``still_valid`` is polled every
``VALIDITY_POLL`` seconds; when it turns false the socket is closed with 4401, also in
the middle of a reply (which is stored as interrupted).

Client -> server (JSON text frames)::

    {"type": "message", "content": str, "conversation_id": str|null,
     "client_message_id": str|null, "replace_from": str|null}
                                replace_from: edit and resend (see ChatRequest)
    {"type": "cancel"}          stop the running reply (stored as interrupted)
    {"type": "ping"}

Server -> client::

    {"type": "start", "conversation_id": str, "message_id": str, "user_message_id": str}
    {"type": "sources", "sources": [Source, ...]}   only when passages were used
    {"type": "warnings", "warnings": [str, ...]}
                                only when the reply goes without the documents or the
                                memories, e.g. "documents unavailable: <reason>"
    {"type": "delta", "text": str}
    {"type": "tool_call", "id": str, "name": str, "arguments": str}
                                a server-side tool starts (arguments: JSON text)
    {"type": "tool_result", "id": str, "name": str, "content": str, "is_error": bool,
     "duration": float}         it ended (id: the call's; duration in seconds)
    {"type": "end", "message_id": str, "status": "complete"|"interrupted"|"error",
     "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}
    {"type": "error", "message": str, "code": int}
    {"type": "pong"}

A ``Source`` (:func:`core.chat.source_of`) is ``{"n", "document_id", "source",
"chunk_index", "page", "score", "text"}``; ``n`` is the number the prompt gave it.

Bad JSON, an unknown type or a bad field gives an ``error`` event (code 400) and the
socket stays open; a message while a reply runs gives an ``error`` with code 409.
Other parts of mami push their own events to an owner's open sockets with
:func:`push_event` (e.g. ``{"type": "image", ...}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from litestar import WebSocket, websocket
from litestar.datastructures import State
from litestar.exceptions import WebSocketDisconnect

from core.api.deps import get_runtime
from core.chat import ChatRequest, Finished, Usage, start_turn
from core.errors import MamiError
from core.protocols import Principal, ToolCall
from core.runtime import Runtime
from core.security import json_problem
from core.tools import ToolResult

log = logging.getLogger("mami.ws")

VALIDITY_POLL = 2.0
OUTBOXES = "ws.outboxes"
CLOSE_AUTH_UNAVAILABLE = 1013
CLOSE_CREDENTIAL_INVALID = 4401


def push_event(runtime: Runtime, owner: str, event: dict[str, Any]) -> int:
    """Send ``event`` to every open chat socket of ``owner``; returns how many."""
    outboxes: set[asyncio.Queue[dict[str, Any]]] = runtime.state.get(OUTBOXES, {}).get(owner, set())
    for outbox in list(outboxes):
        outbox.put_nowait(event)
    return len(outboxes)


async def accept(runtime: Runtime, socket: WebSocket[Any, Any, Any]) -> Principal | None:
    """Authenticate before anything is read; ``None`` when the socket was closed."""
    if not runtime.config.core.auth:
        # Even without auth, a foreign web page must not drive the socket (token-ws-auth
        # checks Origin in accept_anonymous).
        guard = getattr(runtime.authenticator, "accept_anonymous", None)
        if guard is None:
            await socket.accept()
        elif not await guard(socket):
            return None
        return Principal(owner=runtime.config.core.local_owner)
    authenticator = runtime.authenticator
    if authenticator is None:
        await socket.accept()
        await socket.close(code=CLOSE_AUTH_UNAVAILABLE, reason="authentication unavailable")
        return None
    return await authenticator.accept_websocket(socket)


class ChatSocket:
    """One accepted socket: a reader, a single writer draining ``outbox``, an optional
    credential watcher and at most one running turn."""

    def __init__(self, runtime: Runtime, socket: WebSocket[Any, Any, Any],
                 principal: Principal) -> None:
        self.runtime = runtime
        self.socket = socket
        self.principal = principal
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.turn: asyncio.Task[None] | None = None
        self.replying = False

    async def serve(self) -> None:
        boxes = self.runtime.state.setdefault(OUTBOXES, {})
        boxes.setdefault(self.principal.owner, set()).add(self.outbox)
        reader = asyncio.create_task(self._read())
        helpers = [asyncio.create_task(self._write())]
        if self.runtime.config.core.auth and self.runtime.authenticator is not None:
            helpers.append(asyncio.create_task(self._watch(reader)))
        try:
            await reader
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        finally:
            reader.cancel()
            boxes.get(self.principal.owner, set()).discard(self.outbox)
            if self.turn is not None and not self.turn.done():
                self.turn.cancel()
                with contextlib.suppress(BaseException):
                    await self.turn
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _read(self) -> None:
        # An authenticator may limit message size and rate (token-ws-auth does).
        check = getattr(self.runtime.authenticator, "check_message", None)
        while True:
            raw = await self.socket.receive_text()
            code = check(self.socket, len(raw.encode())) if check is not None else None
            if code is not None:
                await self.socket.close(code=code, reason="message too large or too frequent")
                return
            problem = json_problem(raw)
            if problem is not None:
                self.error(problem[0], 400)
                continue
            try:
                message = json.loads(raw)
                kind = message.get("type") if isinstance(message, dict) else None
            except (ValueError, RecursionError):
                self.error("invalid JSON", 400)
                continue
            if kind == "ping":
                self.send({"type": "pong"})
            elif kind == "cancel":
                if self.replying and self.turn is not None:
                    self.turn.cancel()
            elif kind == "message":
                self._start(message)
            else:
                self.error(f"unknown message type {kind!r} (use message, cancel or ping)", 400)

    def _start(self, message: dict[str, Any]) -> None:
        content = message.get("content")
        conversation_id = message.get("conversation_id")
        client_id = message.get("client_message_id")
        replace_from = message.get("replace_from")
        if not isinstance(content, str) or not content.strip():
            self.error("content must be a non-empty string", 400)
        elif not all(v is None or isinstance(v, str)
                     for v in (conversation_id, client_id, replace_from)):
            self.error("conversation_id, client_message_id and replace_from must be strings "
                       "or null", 400)
        elif self.replying:
            self.error("a reply is already running; send cancel first", 409)
        else:
            request = ChatRequest(content, conversation_id=conversation_id,
                                  client_message_id=client_id, replace_from=replace_from)
            self.replying = True
            self.turn = asyncio.create_task(self._run(request))

    async def _run(self, request: ChatRequest) -> None:
        """One turn. The reply counts as running until its ``end`` is sent; the task may
        then go on a little (the ``message_completed`` event) while the next turn starts."""
        me = asyncio.current_task()
        turn = None
        try:
            try:
                turn = await start_turn(self.runtime, self.principal, request)
            except MamiError as exc:
                self.error(exc.message, exc.status_code)
                return
            self.send({"type": "start", "conversation_id": turn.conversation_id,
                       "message_id": turn.message_id, "user_message_id": turn.user_message_id})
            if turn.sources:
                self.send({"type": "sources", "sources": turn.sources})
            if turn.warnings:
                self.send({"type": "warnings", "warnings": list(turn.warnings)})
            try:
                async for item in turn.run():
                    if isinstance(item, str):
                        self.send({"type": "delta", "text": item})
                    elif isinstance(item, ToolCall):
                        self.send({"type": "tool_call", "id": item.id, "name": item.name,
                                   "arguments": item.arguments})
                    elif isinstance(item, Finished):
                        self._end(me, item)
                    elif isinstance(item, ToolResult):
                        self.send({"type": "tool_result", "id": item.tool_call_id,
                                   "name": item.name, "content": item.content,
                                   "is_error": item.is_error,
                                   "duration": round(item.duration, 4)})
            except asyncio.CancelledError:
                if turn.finished is not None:
                    self._end(me, turn.finished)
            except MamiError as exc:  # the turn could not be stored
                self._end(me, Finished("error", turn.message_id, "", Usage(), None,
                                       exc.message, exc.status_code))
        except Exception:
            log.exception("a chat turn failed")
            if turn is None:
                self.error("internal error", 500)
            else:
                self._end(me, Finished("error", turn.message_id, "", Usage(), None,
                                       "internal error", 500))
        finally:
            if self.turn is me:  # a later turn may already be running
                self.replying = False

    def _end(self, me: asyncio.Task[Any] | None, finished: Finished) -> None:
        """Send the turn's ``end`` once, unless another turn has taken over."""
        if self.turn is not me or not self.replying:
            return
        self.replying = False
        if finished.status == "error":
            self.error(finished.error or "the reply failed", finished.error_code or 502)
        self.send({"type": "end", "message_id": finished.message_id, "status": finished.status,
                   "usage": finished.usage.as_dict()})

    async def _write(self) -> None:
        while True:
            event = await self.outbox.get()
            await self.socket.send_json(event)

    async def _watch(self, reader: asyncio.Task[Any]) -> None:
        authenticator = self.runtime.authenticator
        assert authenticator is not None
        while True:
            await asyncio.sleep(VALIDITY_POLL)
            try:
                valid = await authenticator.still_valid(self.principal)
            except Exception as exc:
                log.warning("credential check failed, closing the socket: %s", exc)
                valid = False
            if not valid:
                if self.turn is not None and not self.turn.done():
                    self.turn.cancel()
                    with contextlib.suppress(BaseException):
                        await self.turn
                with contextlib.suppress(Exception):
                    await self.socket.close(code=CLOSE_CREDENTIAL_INVALID,
                                            reason="credential expired or revoked")
                reader.cancel()
                return

    def send(self, event: dict[str, Any]) -> None:
        self.outbox.put_nowait(event)

    def error(self, message: str, code: int) -> None:
        self.send({"type": "error", "message": message, "code": code})


@websocket("/ws/chat")
async def chat_socket(socket: WebSocket[Any, Any, Any], state: State) -> None:
    """Chat over a WebSocket (protocol in this module's docstring)."""
    runtime = get_runtime(state)
    await runtime.ensure_started()
    principal = await accept(runtime, socket)
    if principal is None:
        return
    await ChatSocket(runtime, socket, principal).serve()


routes = [chat_socket]
