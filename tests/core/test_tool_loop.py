"""The server-side tool loop: the model (a scripted OpenAI-compatible server over a real
socket, through openai-llm) asks for mami's own tools, mami runs them and continues;
parallel calls, a tool that raises, one that hangs past its timeout, the step limit,
the stored steps and their replay, and the WebSocket's tool events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest

from core import hookimpl
from core.app import create_app
from core.protocols import ChatMessage, Delta, GenerationParams
from core.tools import tool
from tests.chat_support import OPENAI, plugin_object
from tests.scripted_model import Call, Reply, ScriptedModel, last_tool_results


class PlainProvider:
    """An LLM provider that says nothing about tools or JSON output (no ``supports``)."""

    name = "plain"
    context_window = 4096

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    async def stream(self, messages: Sequence[ChatMessage], params: GenerationParams
                     ) -> AsyncIterator[Delta]:
        self.seen = params
        yield Delta("plain answer", "stop")

    async def aclose(self) -> None:
        pass


class ProviderPlugin:
    def __init__(self, provider: Any) -> None:
        self.provider = provider

    @hookimpl
    def register_llm_providers(self, register: Any, runtime: Any) -> None:
        register(self.provider)


class ToolPlugin:
    """Tools for the loop: ``meet`` (two calls must run at once to pass the barrier),
    ``explode`` (raises), ``hang`` (outlives its timeout), ``lookup`` and ``whoami``
    (needs the owner)."""

    def __init__(self) -> None:
        self.barrier: asyncio.Barrier | None = None
        self.owners: list[str] = []

    @hookimpl
    def register_tools(self, register: Any, runtime: Any) -> None:
        async def meet(name: str) -> dict[str, Any]:
            """Wait until a second call of this tool has started too."""
            if self.barrier is None:
                self.barrier = asyncio.Barrier(2)
            async with asyncio.timeout(5):
                await self.barrier.wait()
            return {"met": name}

        def explode() -> str:
            """Always fails."""
            raise ValueError("boom")

        async def hang() -> str:
            """Never ends in time."""
            await asyncio.sleep(60)
            return "late"

        def lookup(q: str) -> str:
            """Look something up."""
            return f"found {q}"

        def whoami(owner: str) -> str:
            """Whose turn this is."""
            self.owners.append(owner)
            return owner

        async def stall() -> str:
            """Takes a minute (no timeout of its own but the default)."""
            await asyncio.sleep(60)
            return "late"

        register(tool(stall))
        register(tool(meet))
        register(tool(explode))
        register(tool(hang, timeout=0.5))
        register(tool(lookup))
        register(tool(whoami, needs_owner=True))


def script(body: dict[str, Any]) -> Reply:
    """Reads the user's request (the last user message) and plays it out."""
    asked = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    results = last_tool_results(body)
    offered = {t["function"]["name"] for t in body.get("tools") or ()}
    if asked == "meet":
        if results:
            return Reply("both met: " + ", ".join(r["content"] for r in results))
        return Reply("Calling both.", [Call("meet", {"name": "a"}), Call("meet", {"name": "b"})])
    if asked == "faults":
        if results:
            return Reply("survived " + " | ".join(r["content"] for r in results))
        return Reply(calls=[Call("explode"), Call("hang"), Call("nosuch")])
    if asked == "forever":
        if "lookup" in offered:
            return Reply(calls=[Call("lookup", {"q": f"step {len(results)}"})])
        return Reply("I give up.")
    if asked == "stall":
        if results:
            return Reply("after: " + results[0]["content"])
        return Reply(calls=[Call("stall")])
    if asked == "then stall":
        if not results:
            return Reply(calls=[Call("lookup", {"q": "first"})])
        return Reply(calls=[Call("stall")])
    if asked == "mcp":
        if results:
            return Reply("mcp: " + " | ".join(r["content"] for r in results))
        return Reply(calls=[Call("local_add", {"a": 1, "b": 2}),
                            Call("remote_add", {"a": 3, "b": 4})])
    if asked == "who":
        return Reply(" | ".join(r["content"] for r in results)) if results else \
            Reply(calls=[Call("whoami"), Call("whoami", {"owner": "mallory"})])
    return Reply(f"plain answer to {asked}")


@pytest.fixture
def model() -> Iterator[ScriptedModel]:
    server = ScriptedModel(script).start()
    yield server
    server.stop()


@pytest.fixture
def tools() -> ToolPlugin:
    return ToolPlugin()


@pytest.fixture
def mami(make_config: Any, live_server: Any, model: ScriptedModel, tools: ToolPlugin) -> Any:
    config = make_config(core={"max_tool_steps": 2},
                         plugins={"openai-llm": {"base_url": model.url, "model": "scripted",
                                                 "attempts": 1}})
    return live_server(create_app(config, candidates=[OPENAI,
                                                      plugin_object("test-tools", tools)]))


def ask(mami: Any, text: str, conversation: str = "new") -> tuple[dict[str, Any], str]:
    response = httpx.post(mami.url + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": text}],
        "metadata": {"conversation_id": conversation}})
    assert response.status_code == 200, response.text
    return response.json(), response.headers["x-mami-conversation"]


def stored(mami: Any, conversation: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{mami.url}/api/conversations/{conversation}/messages", timeout=10)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def test_parallel_calls_run_concurrently_and_every_step_is_stored(
        mami: Any, model: ScriptedModel) -> None:
    reply, conversation = ask(mami, "meet")
    message = reply["choices"][0]["message"]
    assert message == {"role": "assistant",
                       "content": 'both met: {"met": "a"}, {"met": "b"}'}
    assert reply["choices"][0]["finish_reason"] == "stop"
    # The model was offered mami's tools, then saw its calls and both results.
    first, second = model.requests
    assert {t["function"]["name"] for t in first["tools"]} == \
        {"meet", "explode", "hang", "lookup", "whoami", "stall"}
    calls = second["messages"][-3]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["meet", "meet"]
    assert [m["tool_call_id"] for m in second["messages"][-2:]] == [c["id"] for c in calls]
    rows = stored(mami, conversation)
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "complete"), ("assistant", "complete"), ("tool", "complete"),
        ("tool", "complete"), ("assistant", "complete")]
    assert rows[1]["content"] == "Calling both."
    assert [c["id"] for c in rows[1]["tool_calls"]] == [c["id"] for c in calls]
    assert [r["tool_call_id"] for r in rows[2:4]] == [c["id"] for c in calls]
    assert all(r["tool_name"] == "meet" and r["duration"] >= 0 for r in rows[2:4])
    assert rows[-1]["content"] == message["content"]
    assert rows[-1]["id"] == reply["id"].removeprefix("chatcmpl-")


def test_a_failing_a_hanging_and_an_unknown_tool_become_error_results(
        mami: Any, model: ScriptedModel) -> None:
    reply, conversation = ask(mami, "faults")
    text = reply["choices"][0]["message"]["content"]
    assert text.startswith("survived ")
    explode, hang, unknown = (json.loads(part) for part in text[9:].split(" | "))
    assert "boom" in explode["error"]
    assert "0.5" in hang["error"] or "time" in hang["error"]
    assert "nosuch" in unknown["error"]
    rows = stored(mami, conversation)
    assert [r["status"] for r in rows if r["role"] == "tool"] == ["error"] * 3


def test_a_loop_that_hits_max_tool_steps_must_answer_without_tools(
        mami: Any, model: ScriptedModel) -> None:
    reply, conversation = ask(mami, "forever")
    assert reply["choices"][0]["message"]["content"] == "I give up."
    assert len(model.requests) == 3  # two tool steps ([core] max_tool_steps = 2), then the answer
    assert [bool(r.get("tools")) for r in model.requests] == [True, True, False]
    roles = [r["role"] for r in stored(mami, conversation)]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]


def test_the_owner_comes_from_the_turn_not_the_models_arguments(
        mami: Any, tools: ToolPlugin) -> None:
    reply, _ = ask(mami, "who")
    mine, forged = reply["choices"][0]["message"]["content"].split(" | ")
    assert mine == "local"
    assert "owner" in json.loads(forged)["error"]
    assert tools.owners == ["local"]


def test_a_stored_conversation_replays_its_tool_rows(mami: Any, model: ScriptedModel) -> None:
    _, conversation = ask(mami, "meet")
    ask(mami, "hello again", conversation)
    replayed = model.requests[-1]["messages"]
    roles = [m["role"] for m in replayed]
    assert roles == ["system", "user", "assistant", "tool", "tool", "assistant", "user"]
    calls = replayed[2]["tool_calls"]
    assert [m["tool_call_id"] for m in replayed[3:5]] == [c["id"] for c in calls]
    assert replayed[3]["content"] == '{"met": "a"}' or replayed[3]["content"] == '{"met": "b"}'


def test_the_websocket_sends_tool_call_and_tool_result_events(mami: Any) -> None:
    from websockets.sync.client import connect

    with connect(mami.url.replace("http", "ws") + "/ws/chat",
                 origin=mami.url) as socket:  # type: ignore[arg-type]
        socket.send(json.dumps({"type": "message", "content": "faults"}))
        events = []
        while not events or events[-1]["type"] != "end":
            events.append(json.loads(socket.recv(timeout=30)))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["status"] == "complete"
    calls = [e for e in events if e["type"] == "tool_call"]
    results = [e for e in events if e["type"] == "tool_result"]
    assert [c["name"] for c in calls] == ["explode", "hang", "nosuch"]
    assert all(set(c) == {"type", "id", "name", "arguments"} for c in calls)
    assert {r["id"] for r in results} == {c["id"] for c in calls}
    assert all(r["is_error"] and isinstance(r["duration"], float) for r in results)
    assert max(kinds.index("tool_call"), 0) < kinds.index("tool_result") < kinds.index("delta")


def test_a_model_without_tool_support_is_offered_no_server_tools(
        make_config: Any, live_server: Any, tools: ToolPlugin) -> None:
    provider = PlainProvider()
    server = live_server(create_app(make_config(), candidates=[
        plugin_object("plain-llm", ProviderPlugin(provider)),
        plugin_object("test-tools", tools)]))
    response = httpx.post(server.url + "/v1/chat/completions", timeout=10,
                          json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert provider.seen.tools == ()


def test_the_turns_tool_deadline_ends_running_tools_and_the_model_must_answer(
        make_config: Any, live_server: Any, model: ScriptedModel, tools: ToolPlugin) -> None:
    config = make_config(core={"tool_deadline": 0.3},
                         plugins={"openai-llm": {"base_url": model.url, "model": "scripted",
                                                 "attempts": 1}})
    server = live_server(create_app(config, candidates=[OPENAI,
                                                        plugin_object("test-tools", tools)]))
    reply, _ = ask(server, "stall")
    text = reply["choices"][0]["message"]["content"]
    assert text.startswith("after: ")
    assert "deadline" in json.loads(text[7:])["error"]
    assert [bool(r.get("tools")) for r in model.requests] == [True, False]


async def test_a_turn_stopped_during_a_tool_keeps_its_finished_steps(mami: Any) -> None:
    from websockets.asyncio.client import connect

    async with connect(mami.url.replace("http", "ws") + "/ws/chat", origin=mami.url) as socket:
        await socket.send(json.dumps({"type": "message", "content": "then stall"}))
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while True:
                events.append(json.loads(await socket.recv()))
                if events[-1]["type"] == "tool_call" and events[-1]["name"] == "stall":
                    await socket.send(json.dumps({"type": "cancel"}))
                if events[-1]["type"] == "end":
                    break
    assert events[-1]["status"] == "interrupted"
    conversation = events[0]["conversation_id"]
    rows = await asyncio.to_thread(stored, mami, conversation)
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "complete"), ("assistant", "complete"), ("tool", "complete"),
        ("assistant", "interrupted")]
    assert rows[1]["tool_calls"][0]["name"] == "lookup"
    assert rows[2]["content"] == "found first"


def test_the_model_calls_mcp_tools_over_stdio_and_http_through_mami(
        make_config: Any, live_server: Any, model: ScriptedModel) -> None:
    pytest.importorskip("mcp")
    from tests.plugins.mcp_tools.test_mcp import HttpServer, candidates, http, mcp_table, stdio

    remote = HttpServer().start()
    try:
        config = make_config(plugins={
            "openai-llm": {"base_url": model.url, "model": "scripted", "attempts": 1},
            "mcp": mcp_table({"local": stdio(), "remote": http(remote)})})
        server = live_server(create_app(config, candidates=[OPENAI, *candidates()]))
        reply, conversation = ask(server, "mcp")
    finally:
        remote.stop()
    assert reply["choices"][0]["message"]["content"] == "mcp: 3 | 7"
    offered = {t["function"]["name"] for t in model.requests[0]["tools"]}
    assert {"local_add", "remote_add"} <= offered
    rows = stored(server, conversation)
    assert [(r["role"], r.get("tool_name")) for r in rows[2:4]] == [
        ("tool", "local_add"), ("tool", "remote_add")]


def test_calls_without_ids_or_with_the_same_id_get_ids_of_their_own() -> None:
    from core.chat import CallAssembler
    from core.protocols import ToolCallDelta

    assembler = CallAssembler()
    passed = [assembler.add(f) for f in (
        ToolCallDelta(0, "call_x", "a", '{"q":'), ToolCallDelta(0, None, None, ' 1}'),
        ToolCallDelta(1, "call_x", "b", "{}"), ToolCallDelta(2, None, "c", ""))]
    calls = assembler.calls()
    assert [c.name for c in calls] == ["a", "b", "c"]
    assert calls[0].id == "call_x" and calls[0].arguments == '{"q": 1}'
    assert len({c.id for c in calls}) == 3 and all(c.id.startswith("call_") for c in calls)
    assert calls[2].arguments == "{}"
    # What a client is streamed agrees with the assembled calls.
    assert [p.id for p in passed] == [calls[0].id, None, calls[1].id, calls[2].id]


def test_tool_steps_are_stored_and_replayed_on_postgres(
        make_config: Any, live_server: Any, model: ScriptedModel, tools: ToolPlugin,
        postgres_url: str) -> None:
    from core import migrations

    migrations.upgrade(postgres_url)
    config = make_config(core={"database_url": postgres_url},
                         plugins={"openai-llm": {"base_url": model.url, "model": "scripted",
                                                 "attempts": 1}})
    server = live_server(create_app(config, candidates=[OPENAI,
                                                        plugin_object("test-tools", tools)]))
    _, conversation = ask(server, "meet")
    ask(server, "hello again", conversation)
    rows = stored(server, conversation)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "tool", "assistant",
                                         "user", "assistant"]
    assert rows[0]["tool_calls"] is None and len(rows[1]["tool_calls"]) == 2
    replayed = model.requests[-1]["messages"]
    assert [m["role"] for m in replayed] == ["system", "user", "assistant", "tool", "tool",
                                             "assistant", "user"]


def test_history_cut_inside_a_step_keeps_no_call_without_its_results() -> None:
    from core.chat import paired, without_tools
    from core.context import Turn
    from core.protocols import ToolCall

    a, b = ToolCall("call_a", "f", "{}"), ToolCall("call_b", "f", "{}")
    cut = (ChatMessage("tool", "orphan result", tool_call_id="call_0"),
           ChatMessage("assistant", "thinking", tool_calls=(a, b)),
           ChatMessage("tool", "ra", tool_call_id="call_a"),
           ChatMessage("assistant", "", tool_calls=(ToolCall("call_c", "f", "{}"),)),
           ChatMessage("assistant", "answer"))
    assert paired(cut) == (ChatMessage("assistant", "thinking"),
                           ChatMessage("assistant", "answer"))
    whole = (ChatMessage("user", "q"), ChatMessage("assistant", "", tool_calls=(a,)),
             ChatMessage("tool", "ra", tool_call_id="call_a"), ChatMessage("assistant", "done"))
    assert paired(whole) == whole
    assert without_tools([Turn(whole, 4)]) == [Turn((whole[0], whole[3]), 4)]
