"""Tool calls on the chat page: ``mami serve`` whose model (a scripted OpenAI-compatible
server over loopback) calls the tools of a real MCP server (stdio, written with the
``mcp`` SDK); the page shows each call collapsed under the reply, live and after a
reload."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import free_port
from tests.e2e.conftest import screenshot, server_config
from tests.e2e.pages import finished, send, sign_in, stored_messages
from tests.e2e.server import MamiServer
from tests.forge_standin import ForgeStandIn
from tests.scripted_model import Call, Reply, ScriptedModel, last_tool_results

pytestmark = pytest.mark.slow
pytest.importorskip("mcp")
MCP_SERVER = Path(__file__).resolve().parents[1] / "plugins" / "mcp_tools" / "mcp_server.py"


def script(body: dict[str, Any]) -> Reply:
    results = last_tool_results(body)
    if results:
        return Reply(f"The sum is {results[0]['content']}.")
    if any(t["function"]["name"] == "test_add" for t in body.get("tools") or ()):
        return Reply(calls=[Call("test_add", {"a": 2, "b": 3}),
                            Call("test_explode", {"message": "on purpose"})])
    return Reply("no tools offered")


@pytest.fixture(scope="module")
def tool_mami(tmp_path_factory: pytest.TempPathFactory, forge: ForgeStandIn
              ) -> Iterator[MamiServer]:
    model = ScriptedModel(script).start()
    workdir = tmp_path_factory.mktemp("mami-tools")
    config = server_config(workdir / "data", forge.url, llm="scripted") + f"""
[plugins.openai-llm]
enabled = true
base_url = "{model.url}"
model = "scripted"
attempts = 1

[plugins.mcp]
enabled = true

[plugins.mcp.servers.test]
command = {json.dumps(sys.executable)}
args = [{json.dumps(str(MCP_SERVER))}, "stdio"]
"""
    server = MamiServer(workdir, config, free_port())
    server.start()
    assert server.token, server.output
    yield server
    server.stop()
    model.stop()


def test_each_tool_call_is_shown_collapsed_under_the_reply(page: Any,
                                                           tool_mami: MamiServer) -> None:
    sign_in(page, tool_mami)
    reply = send(page, "What is 2 + 3?")
    assert finished(reply).strip() == "The sum is 5."  # Markdown ends a paragraph with a newline
    calls = reply.locator("details.tool")
    expect(calls).to_have_count(2)
    add, explode = calls.nth(0), calls.nth(1)
    expect(add.locator("summary")).to_contain_text("test_add")
    expect(add.locator(".tool-time")).to_have_text(
        re.compile(r" \(\d+(\.\d)? (ms|s)\)"))
    assert add.get_attribute("open") is None  # collapsed
    expect(add.locator(".tool-result")).not_to_be_visible()
    add.locator("summary").click()
    expect(add.locator(".tool-arguments")).to_have_text('{"a": 2, "b": 3}')
    expect(add.locator(".tool-result")).to_have_text("5")
    expect(explode).to_have_class(re.compile(r"\berror\b"))
    screenshot(page, "tools-01-calls-under-the-reply")

    conversation = str(page.evaluate("localStorage.getItem('mami.conversation')"))
    roles = [m["role"] for m in stored_messages(tool_mami, conversation)]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]
    page.reload()  # the stored steps come back under the same answer
    answer = page.locator("#messages li[data-role=assistant]").last
    expect(answer.locator(".text")).to_have_text("The sum is 5.", timeout=30_000)
    expect(answer.locator("details.tool")).to_have_count(2)
    expect(page.locator("#messages li[data-role=assistant]")).to_have_count(1)
    expect(answer.locator("details.tool").nth(1)).to_have_class(
        re.compile(r"\berror\b"))
    assert page.problems == []
