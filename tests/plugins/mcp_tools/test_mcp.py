"""The mcp plugin against real MCP servers written with the ``mcp`` SDK
(``mcp_server.py``), started by the tests: over stdio, and over streamable HTTP on a
loopback port behind a bearer token. Tools are called through ``runtime.tools.call``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from core.app import create_app, runtime_of
from core.errors import ConfigError
from core.plugins import builtin_candidates
from core.protocols import ToolCall
from core.runtime import Runtime
from core.tools import ToolResult
from tests.conftest import free_port

pytest.importorskip("mcp")

SERVER = str(Path(__file__).with_name("mcp_server.py"))
TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parents[3]


class HttpServer:
    """``mcp_server.py http PORT TOKEN`` in a subprocess; stop and start again on the
    same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> HttpServer:
        self.process = subprocess.Popen([sys.executable, SERVER, "http", str(self.port), TOKEN],
                                        env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.stop()


def stdio(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [SERVER, "stdio"],
            "env": {"MAMI_TEST_VALUE": "from-env"}, **extra}


def http(server: HttpServer, token: str = TOKEN, **extra: Any) -> dict[str, Any]:
    return {"url": server.url, "headers": {"Authorization": f"Bearer {token}"}, **extra}


def mcp_table(servers: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"enabled": True, "servers": servers, "connect_timeout": 30.0, "call_timeout": 5.0,
            "reconnect_initial": 0.2, "reconnect_max": 1.0, "probe_interval": 0.5, **settings}


def candidates() -> list[Any]:
    return [c for c in builtin_candidates() if c.name == "mcp"]


@pytest.fixture
async def make_runtime(make_config: Any) -> AsyncIterator[Callable[..., Any]]:
    runtimes: list[Runtime] = []

    async def build(servers: dict[str, Any], **settings: Any) -> Runtime:
        runtime = Runtime(make_config(plugins={"mcp": mcp_table(servers, **settings)}),
                          candidates())
        runtimes.append(runtime)
        await runtime.ensure_started()
        return runtime

    yield build
    for runtime in runtimes:
        await runtime.stop()


async def call(runtime: Runtime, tool_name: str, /, **arguments: Any) -> ToolResult:
    return await runtime.tools.call(ToolCall("call_1", tool_name, json.dumps(arguments)),
                                    owner="alice")


def error_of(result: ToolResult) -> str:
    assert result.is_error, result.content
    return str(json.loads(result.content)["error"])


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.1)


async def test_tools_of_stdio_and_http_servers_are_mounted_and_called(
        make_runtime: Any, http_server: HttpServer) -> None:
    http_server.start()
    runtime = await make_runtime({"local": stdio(), "remote": http(http_server, prefix="")})
    assert runtime.plugins.records["mcp"].status == "ok"
    assert "tools" in runtime.plugins.records["mcp"].provides
    specs = {s["function"]["name"]: s["function"] for s in runtime.tools.specs("alice")}
    assert sorted(specs) == sorted(["local_add", "local_echo_env", "local_hang", "local_explode",
                                    "local_pid", "add", "echo_env", "hang", "explode", "pid"])
    assert specs["local_add"]["description"] == "Add two integers."
    assert specs["add"]["parameters"]["required"] == ["a", "b"]

    assert (await call(runtime, "local_add", a=2, b=3)).content == "5"
    assert (await call(runtime, "add", a=20, b=22)).content == "42"
    echoed = await call(runtime, "local_echo_env", name="MAMI_TEST_VALUE")
    assert (echoed.content, echoed.is_error) == ("from-env", False)
    assert error_of(await call(runtime, "add", a="x", b=1)) == "a: expected integer, got string"

    health = await runtime.tools.toolsets[0][1].health()  # type: ignore[attr-defined]
    assert health["status"] == "ok"
    assert {n: s["state"] for n, s in health["servers"].items()} == {"local": "up", "remote": "up"}


async def test_a_hanging_tool_times_out_and_a_raising_one_is_an_error_result(
        make_runtime: Any) -> None:
    runtime = await make_runtime({"local": stdio()})
    started = time.monotonic()
    hung = await call(runtime, "local_hang", seconds=120)
    assert time.monotonic() - started < 60
    assert error_of(hung) == "MCP server local: hang timed out after 5s"
    assert error_of(await call(runtime, "local_explode", message="x")) == \
        "explode failed: Error executing tool explode"
    assert (await call(runtime, "local_add", a=1, b=1)).content == "2"  # the session lives on


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


async def test_one_server_process_answers_every_call(make_runtime: Any, tmp_path: Path
                                                     ) -> None:
    """A stdio server is started once, when the plugin starts, and that one session
    answers every call: concurrent ones, and the ones after a call that raised (no
    process, session or reconnection per call). The test server logs a raising tool's
    traceback plainly, not through Rich (see mcp_server.py: that took 0.3-0.8 s per
    call under load, and held up the calls beside it)."""
    log = tmp_path / "server.log"
    runtime = await make_runtime({"local": stdio(env={"MAMI_TEST_LOG": str(log)})})
    server_pid = int((await call(runtime, "local_pid")).content)
    assert server_pid != os.getpid()
    if Path("/proc").is_dir():
        assert parent_of(server_pid) == os.getpid()  # mami's own child, not a shell's
    assert error_of(await call(runtime, "local_explode", message="x")) == \
        "explode failed: Error executing tool explode"
    results = await asyncio.gather(*(call(runtime, "local_pid") for _ in range(12)),
                                   call(runtime, "local_explode", message="y"))
    assert {r.content for r in results[:-1]} == {str(server_pid)}
    assert results[-1].is_error
    connection = runtime.tools.toolsets[0][1].connections[0]  # type: ignore[attr-defined]
    assert (connection.state, connection.attempts) == ("up", 1)
    logged = log.read_text()
    assert "RuntimeError: boom: y" in logged
    assert ", in explode" in logged and "\u256d" not in logged  # not Rich's frames and box


async def test_a_server_that_is_down_degrades_health_then_recovers(
        make_config: Any, http_server: HttpServer) -> None:
    table = mcp_table({"remote": {**http(http_server), "url": http_server.url + "?key=hush"}})
    app = create_app(make_config(plugins={"mcp": table}), candidates=candidates())
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        runtime = runtime_of(app)
        toolset = runtime.tools.toolsets[0][1]
        health = await client.get("/health")
        assert health.json()["status"] == "degraded"
        entry = health.json()["plugins"]["mcp"]
        assert entry["status"] == "degraded"
        assert "MCP server remote is down" in entry["error"]
        assert entry["health"]["servers"]["remote"]["where"] == http_server.url
        assert "hush" not in health.text
        assert runtime.tools.specs("alice") == []
        [check] = await toolset.doctor()  # type: ignore[attr-defined]
        assert (check.name, check.status) == ("mcp server remote", "fail")

        http_server.start()
        await until(lambda: runtime.tools.has("remote_add", "alice"))
        assert (await client.get("/health")).json()["status"] == "ok"
        assert (await call(runtime, "remote_add", a=1, b=2)).content == "3"
        [check] = await toolset.doctor()  # type: ignore[attr-defined]
        assert check.status == "ok" and check.detail.startswith("5 tools over streamable-http")

        http_server.stop()
        failed = await call(runtime, "remote_add", a=1, b=2)
        assert "MCP server remote" in error_of(failed)
        await until(lambda: toolset.connections[0].state == "down")  # type: ignore[attr-defined]
        assert (await client.get("/health")).json()["status"] == "degraded"
        down = await call(runtime, "remote_add", a=1, b=2)  # last known tools stay listed
        assert error_of(down).startswith("MCP server remote is unavailable")

        http_server.start()
        await until(lambda: toolset.connections[0].state == "up")  # type: ignore[attr-defined]
        assert (await call(runtime, "remote_add", a=2, b=2)).content == "4"


async def test_wrong_headers_leave_the_server_down_with_the_reason(
        make_runtime: Any, http_server: HttpServer) -> None:
    http_server.start()
    runtime = await make_runtime({"remote": http(http_server, token="wrong")})
    connection = runtime.tools.toolsets[0][1].connections[0]  # type: ignore[attr-defined]
    assert connection.state == "down"
    assert "401" in (connection.error or "")
    assert runtime.plugins.records["mcp"].status == "ok"  # the plugin runs; the server is down


async def test_a_command_that_does_not_exist_is_a_server_that_is_down(
        make_runtime: Any, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-server")
    runtime = await make_runtime({"gone": {"command": missing}}, connect_timeout=5.0)
    [(plugin, toolset)] = runtime.tools.toolsets
    health = await toolset.health()  # type: ignore[attr-defined]
    assert (plugin, health["status"]) == ("mcp", "degraded")
    assert health["servers"]["gone"]["state"] == "down"
    assert "no-such-server" in health["reason"]
    assert runtime.tools.specs("alice") == []


def running(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


async def test_a_server_that_never_answers_is_down_after_connect_timeout(
        make_config: Any) -> None:
    marker = f"mami-silent-{os.getpid()}"
    silent = {"command": sys.executable,
              "args": ["-c", f"import time; time.sleep(300)  # {marker}"]}
    runtime = Runtime(make_config(plugins={"mcp": mcp_table({"silent": silent},
                                                            connect_timeout=2.0)}),
                      candidates())
    started = time.monotonic()
    await runtime.ensure_started()
    try:
        assert time.monotonic() - started < 30
        connection = runtime.tools.toolsets[0][1].connections[0]  # type: ignore[attr-defined]
        assert (connection.state, connection.error) == ("down", "timed out")
    finally:
        await runtime.stop()
    await until(lambda: running(marker) == [], timeout=20)  # no server process is left


@pytest.mark.parametrize(("servers", "message"), [
    ({"x": {"command": "a", "url": "http://b"}},
     "[plugins.mcp] servers.x: give either command (stdio) or url (streamable HTTP)"),
    ({"x": {}}, "[plugins.mcp] servers.x: give either command (stdio) or url"),
    ({"x": {"url": "ftp://b"}}, "[plugins.mcp] servers.x url: must start with http://"),
    ({"x": {"command": "a", "color": 1}}, "[plugins.mcp.servers.x] color: unknown setting"),
    ({"x": {"command": "a", "args": "b"}}, "[plugins.mcp.servers.x] args: expected a list"),
    ({"a b": {"command": "a"}}, "[plugins.mcp] servers.a b: a server name is 1-32 letters"),
])
def test_bad_server_tables_stop_startup_naming_the_key(
        make_config: Any, servers: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Runtime(make_config(plugins={"mcp": {"enabled": True, "servers": servers}}),
                candidates())
    assert message in str(info.value)


def test_the_sdk_is_imported_only_when_the_plugin_starts() -> None:
    code = ("import sys, plugins.mcp_tools, core.runtime, core.app; "
            "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "[]"
