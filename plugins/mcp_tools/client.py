"""Connections to MCP servers through the ``mcp`` SDK (imported here, and only here).

Each :class:`Connection` runs one background task that owns the SDK client (anyio
wants a client entered and left by the same task): connect and list the tools within
``connect_timeout``, then probe every ``probe_interval`` (or at once after a call
failed), and after any failure wait ``reconnect_initial`` seconds, doubling up to
``reconnect_max``, before the next attempt. Calls come from other tasks and use the
live client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    REQUEST_TIMEOUT,
    CallToolResult,
    EmbeddedResource,
    ResourceLink,
    TextContent,
)

from core.config import hide_url_secrets
from core.plugins import contained, describe
from core.protocols import Check
from core.tools import Tool, ToolError, ToolRejected
from plugins.mcp_tools import PLUGIN, ServerSettings, Settings

log = logging.getLogger("mami.mcp")

CLOSE_TIMEOUT = 5.0
CALL_MARGIN = 2.0  # the SDK's own call timeout answers first; the tool box's is a backstop
PAGE_CAP = 100
UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def root_cause(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (anyio wraps transport errors in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def explain(exc: BaseException) -> str:
    cause = root_cause(exc)
    if isinstance(cause, MCPError):
        return cause.message
    if isinstance(cause, TimeoutError):
        return "timed out"
    return str(hide_url_secrets(describe(cause)))


def render(result: CallToolResult) -> Any:
    """What the model sees of a result: its text (other content named, not inlined), or
    the structured content when there is no text."""
    parts = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, EmbeddedResource):
            resource = block.resource
            parts.append(getattr(resource, "text", None) or f"[resource {resource.uri}]")
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{block.type} {getattr(block, 'mime_type', '') or ''}]"
                         .replace(" ]", "]"))
    if parts:
        return "\n".join(parts)
    if result.structured_content is not None:
        return result.structured_content
    return ""


class Connection:
    """One MCP server: its state (``connecting``, ``up``, ``down``, ``closed``), its
    tools and the task that keeps it connected."""

    def __init__(self, name: str, server: ServerSettings, settings: Settings) -> None:
        self.name = name
        self.server = server
        self.settings = settings
        self.prefix = f"{name}_" if server.prefix is None else server.prefix
        self.call_timeout = server.call_timeout or settings.call_timeout
        self.state = "connecting"
        self.error: str | None = None
        self.since = time.time()
        self.tools: list[Tool] = []
        self.attempts = 0
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self._http_status: int | None = None

    @property
    def transport(self) -> str:
        return "streamable-http" if self.server.url else "stdio"

    @property
    def where(self) -> str:
        """The URL without credentials, or the command without its arguments (which may
        hold some)."""
        if self.server.url:
            return str(hide_url_secrets(self.server.url))
        return self.server.command

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp server {self.name}")

    async def first_attempt(self) -> None:
        await self._attempted.wait()

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)

    # the background task

    async def _run(self) -> None:
        delay = self.settings.reconnect_initial
        while not self._closing:
            self.attempts += 1
            self._http_status = None
            try:
                await self._connected_session()
            except BaseException as exc:
                if not contained(exc):
                    raise
                status = f" (HTTP {self._http_status})" if self._http_status else ""
                self._mark("down", explain(exc) + status)
                log.warning("MCP server %s is down: %s (retrying in %gs)", self.name,
                            self.error, delay)
            else:
                delay = self.settings.reconnect_initial
            finally:
                self._client = None
            self._attempted.set()
            if self._closing:
                break
            await self._sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max)
        self._mark("closed", None)

    async def _connected_session(self) -> None:
        async with AsyncExitStack() as stack:
            async with asyncio.timeout(self.settings.connect_timeout):
                client = await stack.enter_async_context(await self._client_for(stack))
                self.tools = await self._list(client)
            self._client = client
            self._mark("up", None)
            self._attempted.set()
            log.info("MCP server %s is up (%d tools)", self.name, len(self.tools))
            while not self._closing:
                await self._sleep(self.settings.probe_interval)
                if self._closing:
                    break
                async with asyncio.timeout(self.settings.connect_timeout):
                    self.tools = await self._list(client)

    async def _client_for(self, stack: AsyncExitStack) -> Client:
        if self.server.url:
            http = create_mcp_http_client(
                headers=dict(self.server.headers) or None,
                timeout=httpx2.Timeout(self.settings.connect_timeout,
                                       read=MCP_DEFAULT_SSE_READ_TIMEOUT))
            await stack.enter_async_context(http)

            async def note_status(response: httpx2.Response) -> None:
                if response.status_code >= 400:  # the SDK's error does not say which
                    self._http_status = response.status_code

            http.event_hooks["response"].append(note_status)
            return Client(streamable_http_client(self.server.url, http_client=http),
                          read_timeout_seconds=self.settings.connect_timeout)
        params = StdioServerParameters(command=self.server.command, args=self.server.args,
                                       env=dict(self.server.env) or None,
                                       cwd=self.server.cwd or None)
        return Client(params, read_timeout_seconds=self.settings.connect_timeout)

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def _mark(self, state: str, error: str | None) -> None:
        if state != self.state:
            self.since = time.time()
        self.state, self.error = state, error

    async def _list(self, client: Client) -> list[Tool]:
        listed: list[Any] = []
        cursor: str | None = None
        for _ in range(PAGE_CAP):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        tools: dict[str, Tool] = {}
        for item in listed:
            try:
                made = self._tool(item)
            except ToolRejected as exc:
                log.warning("MCP server %s: tool %s is left out: %s", self.name, item.name, exc)
                continue
            if made.name in tools:
                log.warning("MCP server %s: tool %s is listed twice (as %s); the first is kept",
                            self.name, item.name, made.name)
                continue
            tools[made.name] = made
        return list(tools.values())

    def _tool(self, listed: Any) -> Tool:
        name = UNSAFE.sub("_", f"{self.prefix}{listed.name}")[:64]
        schema = dict(listed.input_schema or {})
        if schema.get("type") != "object":
            schema = {"type": "object", "properties": {}}
        original = listed.name

        async def call(**arguments: Any) -> Any:
            return await self.call(original, arguments)

        return Tool(name, listed.description or listed.title or "", schema, call,
                    timeout=self.call_timeout + CALL_MARGIN)

    # calls from the tool box

    async def call(self, tool_name: str, arguments: dict[str, Any]) -> Any:
        """Call a tool of this server; every failure is a :class:`ToolError` the model
        reads, and asks the background task to probe the server at once."""
        client = self._client
        if client is None or self.state != "up":
            raise ToolError(f"MCP server {self.name} is unavailable "
                            f"({self.error or self.state}); try again later")
        try:
            result = await client.call_tool(tool_name, arguments,
                                            read_timeout_seconds=self.call_timeout)
        except MCPError as exc:
            self._wake.set()  # is the server still there? probe now
            if exc.code == REQUEST_TIMEOUT:
                raise ToolError(f"MCP server {self.name}: {tool_name} timed out after "
                                f"{self.call_timeout:g}s") from exc
            raise ToolError(f"MCP server {self.name}: {exc.message}") from exc
        except Exception as exc:
            self._wake.set()
            raise ToolError(f"MCP server {self.name} failed: {explain(exc)}") from exc
        content = render(result)
        if result.is_error:
            text = content if isinstance(content, str) else json.dumps(content)
            raise ToolError(f"{tool_name} failed: {text or 'no details'}")
        return content

    def report(self) -> dict[str, Any]:
        return {"state": self.state, "transport": self.transport, "where": self.where,
                "tools": len(self.tools), "error": self.error,
                "since": round(self.since, 3), "attempts": self.attempts}


class MCPToolset:
    """The tools of every configured MCP server (a :class:`core.tools.Toolset`)."""

    name = PLUGIN

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connections = [Connection(name, server, settings)
                            for name, server in settings.server_settings().items()]

    async def start(self) -> None:
        """Start every connection and wait for each one's first attempt (bounded)."""
        for connection in self.connections:
            connection.start()
        if self.connections:
            await asyncio.wait([asyncio.ensure_future(c.first_attempt())
                                for c in self.connections],
                               timeout=self.settings.connect_timeout + CLOSE_TIMEOUT)

    def tools(self) -> Sequence[Tool]:
        return [tool for connection in self.connections for tool in connection.tools]

    async def health(self) -> dict[str, Any]:
        down = [c for c in self.connections if c.state != "up"]
        report: dict[str, Any] = {
            "status": "degraded" if down else "ok",
            "servers": {c.name: c.report() for c in self.connections},
        }
        if down:
            report["reason"] = "; ".join(
                f"MCP server {c.name} is {c.state}" + (f": {c.error}" if c.error else "")
                for c in down)
        return report

    async def doctor(self) -> list[Check]:
        checks = []
        for c in self.connections:
            label = f"mcp server {c.name}"
            if c.state == "up":
                checks.append(Check(label, "ok", f"{len(c.tools)} tools over {c.transport} "
                                                  f"({c.where})"))
            else:
                fix = ("check that the command runs and speaks MCP on stdio"
                       if c.transport == "stdio" else
                       "check that the server runs at that URL and accepts the headers")
                checks.append(Check(label, "fail", f"{c.state} ({c.where}): {c.error}",
                                    f"{fix}, or remove [plugins.mcp.servers.{c.name}]"))
        return checks

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.connections))
