"""What running a tool through ``runtime.tools`` costs, against calling it directly.

``python bench/tool_calls.py`` prints p50/p95 per call, interleaved so load from other
processes hits every path alike:

- **direct**: the function itself (``await fn(**args)``; for a sync one, in
  ``asyncio.to_thread``, the obvious way to keep it off the loop);
- **tool box**: :meth:`core.tools.ToolBox.call` on a :class:`core.protocols.ToolCall`:
  look-up and allow-list, JSON arguments parsed and checked against the schema,
  timeout, result serialised (a sync tool in a daemon thread of its own);
- **MCP**: the ``add`` tool of ``tests/plugins/mcp_tools/mcp_server.py`` over stdio,
  through the mcp plugin (``ToolBox.call`` -> SDK client), against the SDK's own
  ``Client.call_tool`` on a second connection to the same kind of server.

Target: the tool box adds at most 1 ms per call beyond the tool's own time (the
issue's budget is 5 ms per tool step, the model's turn included).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import pct, save, say  # noqa: E402

from core.protocols import ToolCall  # noqa: E402
from core.tools import ToolBox, tool  # noqa: E402

ROUNDS = 400
MCP_ROUNDS = 150
SERVER = ROOT / "tests" / "plugins" / "mcp_tools" / "mcp_server.py"


async def lookup(query: str, k: int = 3) -> list[dict[str, Any]]:
    """Look something up."""
    return [{"n": i, "text": query} for i in range(k)]


def lookup_sync(query: str, k: int = 3) -> list[dict[str, Any]]:
    """Look something up, blocking."""
    return [{"n": i, "text": query} for i in range(k)]


def row(name: str, timings: dict[str, list[float]]) -> None:
    base = pct(timings["direct"], 0.5)
    for method, values in timings.items():
        added = "" if method == "direct" else \
            f"   added p50 {(pct(values, 0.5) - base) * 1e3:7.3f} ms"
        say(f"{name:<22} {method:<9} p50 {pct(values, 0.5) * 1e3:8.3f} ms   "
            f"p95 {pct(values, 0.95) * 1e3:8.3f} ms{added}")


async def local_tools() -> None:
    box = ToolBox(owners={"alice": ["*"]})
    box.add(tool(lookup))
    box.add(tool(lookup_sync))
    arguments = json.dumps({"query": "tea", "k": 3})
    for name, direct in (("async tool", lambda: lookup("tea", 3)),
                         ("sync tool", lambda: asyncio.to_thread(lookup_sync, "tea", 3))):
        fn_name = "lookup" if name == "async tool" else "lookup_sync"
        timings: dict[str, list[float]] = {"direct": [], "tool box": []}
        for i in range(ROUNDS):
            started = time.perf_counter()
            json.dumps(await direct())
            timings["direct"].append(time.perf_counter() - started)
            started = time.perf_counter()
            result = await box.call(ToolCall(f"call_{i}", fn_name, arguments), owner="alice")
            timings["tool box"].append(time.perf_counter() - started)
            assert not result.is_error, result.content
        row(name, timings)


async def mcp_tools() -> None:
    try:
        from mcp import Client, StdioServerParameters
    except ImportError:
        say("MCP                    skipped: pip install 'mami[mcp]'")
        return
    from plugins.mcp_tools import Settings
    from plugins.mcp_tools.client import MCPToolset

    server = {"command": sys.executable, "args": [str(SERVER), "stdio"]}
    toolset = MCPToolset(Settings(servers={"s": server}, connect_timeout=60.0))
    await toolset.start()
    box = ToolBox()
    box.add(toolset, "mcp")
    params = StdioServerParameters(command=sys.executable, args=[str(SERVER), "stdio"])
    try:
        async with Client(params, read_timeout_seconds=60) as client:
            timings: dict[str, list[float]] = {"direct": [], "tool box": []}
            for i in range(MCP_ROUNDS):
                started = time.perf_counter()
                await client.call_tool("add", {"a": i, "b": 1})
                timings["direct"].append(time.perf_counter() - started)
                started = time.perf_counter()
                result = await box.call(ToolCall(f"call_{i}", "s_add",
                                                 json.dumps({"a": i, "b": 1})), owner="o")
                timings["tool box"].append(time.perf_counter() - started)
                assert result.content == str(i + 1), result.content
            row("MCP add over stdio", timings)
    finally:
        await toolset.aclose()


async def main() -> None:
    import os

    say(f"tool calls, {ROUNDS} per row ({MCP_ROUNDS} over MCP); load average "
        f"{os.getloadavg()[0]:.2f} at the start")
    await local_tools()
    await mcp_tools()
    print(f"saved {save('tool_calls')}")


if __name__ == "__main__":
    asyncio.run(main())
