"""A small real MCP server written with the ``mcp`` SDK, for the tests:
``python mcp_server.py stdio`` or ``python mcp_server.py http PORT [TOKEN]``.

Tools: ``add`` (numbers), ``echo_env`` (an environment variable of the server),
``hang`` (sleeps past any timeout), ``explode`` (raises) and ``whoami`` (the
``Authorization`` header the HTTP server received, to check headers arrive)."""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("mami-test")
HEADERS: dict[str, str] = {}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo_env(name: str) -> str:
    """The value of one environment variable of the server."""
    return os.environ.get(name, "<unset>")


@server.tool()
async def hang(seconds: float = 60.0) -> str:
    """Sleep for a long time."""
    await asyncio.sleep(seconds)
    return "woke up"


@server.tool()
def explode(message: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom: {message}")


def main() -> None:
    if sys.argv[1] == "stdio":
        server.run("stdio")
        return
    port = int(sys.argv[2])
    token = sys.argv[3] if len(sys.argv) > 3 else ""
    import uvicorn

    app = server.streamable_http_app(host="127.0.0.1")

    async def guarded(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and token:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            if auth != f"Bearer {token}":
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
