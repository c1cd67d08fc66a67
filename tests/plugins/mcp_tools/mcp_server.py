"""A small real MCP server written with the ``mcp`` SDK, for the tests:
``python mcp_server.py stdio`` or ``python mcp_server.py http PORT [TOKEN]``.

Tools: ``add`` (numbers), ``echo_env`` (an environment variable of the server),
``hang`` (sleeps past any timeout), ``explode`` (raises) and ``pid`` (the server's
process id).

Logging is plain: ``MCPServer`` logs through Rich with ``rich_tracebacks`` when Rich is
installed, and rendering the traceback of a raising tool blocks the server's one thread
for 0.3-0.6 s per call on two loaded cores (nearly all of that call's latency; a call
beside it waits too: 0.83 s for both calls of tests/e2e/test_tools_page.py at load 9.5,
0.07 s with plain logging). ``MAMI_TEST_LOG`` names a file that gets the server's
stderr."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from mcp.server.mcpserver import MCPServer

LOG_FILE = os.environ.get("MAMI_TEST_LOG")
if LOG_FILE:  # all the server writes to stderr, for a test to read
    os.dup2(os.open(LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
server = MCPServer("mami-test")
HEADERS: dict[str, str] = {}
for handler in logging.getLogger().handlers[:]:
    logging.getLogger().removeHandler(handler)
logging.getLogger().addHandler(logging.StreamHandler())


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
def pid() -> int:
    """The server's process id."""
    return os.getpid()


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
