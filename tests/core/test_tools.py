"""Tools: schemas from signatures and docstrings, the tool box, and tools of plugins."""

from __future__ import annotations

import asyncio
import enum
import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import pytest

from core import hookimpl
from core.errors import ConfigError
from core.plugins import Candidate
from core.protocols import ToolCall
from core.runtime import Runtime
from core.tools import Tool, ToolBox, ToolError, ToolRejected, parse_docstring, tool


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def forecast(city: str, days: int = 3, unit: Literal["c", "f"] = "c",
             hours: list[int] | None = None, colour: Colour | None = None,
             detailed: bool = False, note: Annotated[str, "free text"] = "") -> str:
    """Tell the weather.

    Looks it up somewhere.

    Args:
        city: Name of the city,
            in English.
        days (int): How many days.
        unit: Degrees unit.
        hours: Hours of the day to include.
        colour: A colour.
    """
    return f"{city}/{days}/{unit}/{hours}/{colour}/{detailed}/{note}"


def test_the_schema_comes_from_the_signature_and_the_docstring() -> None:
    made = tool(forecast)
    assert made.name == "forecast"
    assert made.description == "Tell the weather.\n\nLooks it up somewhere."
    assert made.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "Name of the city, in English."},
            "days": {"type": "integer", "description": "How many days.", "default": 3},
            "unit": {"type": "string", "enum": ["c", "f"], "description": "Degrees unit.",
                     "default": "c"},
            "hours": {"type": ["array", "null"], "items": {"type": "integer"},
                      "description": "Hours of the day to include."},
            "colour": {"type": ["string", "null"], "enum": ["red", "blue", None],
                       "description": "A colour."},
            "detailed": {"type": "boolean", "default": False},
            "note": {"type": "string", "description": "free text", "default": ""},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert made.spec() == {"type": "function", "function": {
        "name": "forecast", "description": made.description, "parameters": made.parameters}}
    assert made("Oslo") == "Oslo/3/c/None/None/False/"  # still callable as the function


def test_rest_and_numpy_docstrings_describe_parameters() -> None:
    assert parse_docstring("Add.\n\n:param a: first\n:param int b: second\n:returns: sum") == (
        "Add.", {"a": "first", "b": "second"})
    numpy = "Add.\n\nParameters\n----------\na : int\n    first one\nb : int\n    second\n\n" \
            "Returns\n-------\nint\n    the sum"
    assert parse_docstring(numpy) == ("Add.", {"a": "first one", "b": "second"})


def test_tool_works_as_decorator_with_and_without_options() -> None:
    @tool
    def plain(x: float, tags: dict[str, int]) -> float:
        return x

    @tool(name="renamed", description="given", timeout=2.5)
    async def other(y: tuple[int, str], z: Any = None) -> None:
        """Ignored."""

    explicit = tool(lambda **kw: kw, name="raw",
                    parameters={"type": "object", "properties": {"q": {"type": "string"}}})
    assert plain.parameters["properties"] == {
        "x": {"type": "number"}, "tags": {"type": "object", "additionalProperties":
                                          {"type": "integer"}}}
    assert (other.name, other.description, other.timeout) == ("renamed", "given", 2.5)
    assert other.parameters["properties"]["y"]["prefixItems"] == [
        {"type": "integer"}, {"type": "string"}]
    assert other.parameters["properties"]["z"] == {}
    assert other.parameters["required"] == ["y"]
    assert explicit.parameters["properties"] == {"q": {"type": "string"}}


def test_bad_tools_are_refused_at_once() -> None:
    def takes_owner(owner: str, q: str) -> str:
        return q

    with pytest.raises(ToolRejected, match="needs_owner=True"):
        tool(takes_owner)
    scoped = tool(takes_owner, needs_owner=True)
    assert list(scoped.parameters["properties"]) == ["q"]
    with pytest.raises(ToolRejected, match="name"):
        tool(takes_owner, name="has space", needs_owner=True)
    with pytest.raises(ToolRejected, match="parameters"):
        Tool("x", "d", {"type": "array"}, print)
    with pytest.raises(ToolRejected, match="timeout"):
        Tool("x", "d", {"type": "object"}, print, timeout=0)
    with pytest.raises(ToolRejected, match="takes no 'owner'"):
        tool(lambda q: q, name="n", needs_owner=True)


def call(name: str, arguments: Any = "{}", call_id: str = "call_1") -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(call_id, name, text)


def error_of(content: str) -> str:
    return str(json.loads(content)["error"])


@dataclass
class Found:
    title: str
    at: datetime


async def test_sync_tools_run_in_a_thread_and_async_ones_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    seen: dict[str, int] = {}

    @tool
    def blocking(n: int) -> dict[str, Any]:
        seen["sync"] = threading.get_ident()
        seen["daemon"] = threading.current_thread().daemon  # never holds the process at exit
        return {"n": n * 2}

    @tool
    async def awaiting(text: str) -> Found:
        seen["async"] = threading.get_ident()
        await asyncio.sleep(0)
        return Found(text, datetime(2026, 1, 2, 3, 4))

    box = ToolBox()
    box.add(blocking, "p")
    box.add(awaiting, "p")
    first = await box.call(call("blocking", {"n": 21}), owner="alice")
    second = await box.call(call("awaiting", {"text": "ünï"}, "call_2"), owner="alice")
    assert (first.tool_call_id, first.name, first.is_error) == ("call_1", "blocking", False)
    assert json.loads(first.content) == {"n": 42}
    assert seen["sync"] != loop_thread and seen["async"] == loop_thread and seen["daemon"]
    assert json.loads(second.content) == {"title": "ünï", "at": "2026-01-02T03:04:00"}
    assert first.duration >= 0 and second.duration >= 0


async def test_a_string_result_is_given_as_is_and_enums_arrive_as_members() -> None:
    @tool
    def paint(colour: Colour, shade: Colour | None = None) -> str:
        assert isinstance(colour, Colour)
        return f"{colour.name} {shade.name if shade else '-'}"

    box = ToolBox()
    box.add(paint)
    result = await box.call(call("paint", {"colour": "blue", "shade": "red"}), owner="o")
    assert (result.content, result.is_error) == ("BLUE RED", False)
    wrong = await box.call(call("paint", {"colour": "green"}), owner="o")
    assert wrong.is_error and error_of(wrong.content) == 'colour: must be one of "red", "blue"'


async def test_failures_become_error_results_and_never_raise() -> None:
    release = threading.Event()

    @tool(timeout=0.2)
    def hangs() -> str:
        release.wait(30)
        return "late"

    @tool(timeout=0.2)
    async def hangs_async() -> str:
        await asyncio.sleep(30)
        return "late"

    @tool
    def raises(x: int) -> int:
        raise ValueError(f"bad x {x}")

    @tool
    def explains() -> int:
        raise ToolError("the wiki is read-only")

    @tool
    def not_json() -> object:
        return object()

    @tool
    async def own_timeout() -> None:
        raise TimeoutError("upstream took too long")

    box = ToolBox(timeout=5.0)
    for item in (hangs, hangs_async, raises, explains, not_json, own_timeout):
        box.add(item, "p")
    try:
        cases = {
            "hangs": (call("hangs"), "tool hangs timed out after 0.2s"),
            "hangs_async": (call("hangs_async"), "tool hangs_async timed out after 0.2s"),
            "raises": (call("raises", {"x": 3}), "ValueError: bad x 3"),
            "explains": (call("explains"), "the wiki is read-only"),
            "not_json": (call("not_json"), "tool not_json returned something that is not "
                                           "JSON: a object is not JSON"),
            "own_timeout": (call("own_timeout"), "TimeoutError: upstream took too long"),
            "unknown": (call("nope"), "no tool named 'nope' is available"),
            "bad json": (call("raises", '{"x": 1'), "the arguments are not valid JSON "
                                                    "(Expecting ',' delimiter at line 1 "
                                                    "column 8)"),
            "not object": (call("raises", "[1]"), "the arguments must be a JSON object, "
                                                  "got array"),
            "missing": (call("raises", {}), "arguments: missing required argument 'x'"),
            "unknown arg": (call("raises", {"x": 1, "y": 2}),
                            "arguments: unknown argument 'y' (known: x)"),
            "wrong type": (call("raises", {"x": "3"}), "x: expected integer, got string"),
        }
        started = time.monotonic()
        results = await asyncio.gather(*(box.call(c, owner="o") for c, _ in cases.values()))
        elapsed = time.monotonic() - started
    finally:
        release.set()
    for (label, (_, message)), result in zip(cases.items(), results, strict=True):
        assert result.is_error, label
        assert error_of(result.content) == message, label
    assert elapsed < 5.0  # both hanging tools were abandoned at their own 0.2 s
    empty = await box.call(call("explains", ""), owner="o")
    assert error_of(empty.content) == "the wiki is read-only"  # "" means no arguments


async def test_cancelling_the_caller_cancels_the_call() -> None:
    started = asyncio.Event()

    @tool
    async def slow() -> str:
        started.set()
        await asyncio.sleep(30)
        return "x"

    box = ToolBox()
    box.add(slow)
    task = asyncio.ensure_future(box.call(call("slow"), owner="o"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_owner_comes_from_the_turn_never_from_the_model() -> None:
    @tool(needs_owner=True)
    def whoami(owner: str, greeting: str = "hi") -> str:
        return f"{greeting} {owner}"

    box = ToolBox()
    box.add(whoami)
    assert "owner" not in json.dumps(box.specs("alice"))
    assert (await box.call(call("whoami"), owner="alice")).content == "hi alice"
    forged = await box.call(call("whoami", {"owner": "bob"}), owner="alice")
    assert forged.is_error and "owner comes from the conversation" in error_of(forged.content)


async def test_the_owner_allow_list_and_the_plugin_selection() -> None:
    def make(name: str) -> Tool:
        return tool(lambda: name, name=name, description=name)

    box = ToolBox(owners={"alice": ["search_*", "remember"], "*": ["search_documents"]},
                  selection=lambda plugin: {"off": False, "some": ["b_*"]}.get(plugin, True))
    assert box.add(make("search_documents"), "rag")
    assert box.add(make("remember"), "mem")
    assert box.add(make("search_web"), "web")
    assert not box.add(make("a_one"), "off")
    assert not box.add(make("a_two"), "some")
    assert box.add(make("b_two"), "some")
    names = [s["function"]["name"] for s in box.specs("alice")]
    assert names == ["search_documents", "remember", "search_web"]
    assert [s["function"]["name"] for s in box.specs("bob")] == ["search_documents"]
    assert box.has("remember", "alice") and not box.has("remember", "bob")
    refused = await box.call(call("remember"), owner="bob")
    assert refused.is_error and error_of(refused.content) == \
        "no tool named 'remember' is available"
    assert (await box.call(call("remember"), owner="alice")).content == "remember"
    assert ToolBox(owners={"alice": ["*"]}).specs("carol") == []


# -- tools of plugins --------------------------------------------------------------------


def echo_tool(name: str) -> Tool:
    return tool(lambda text: text, name=name, description=f"{name} echoes")


class Tools:
    def __init__(self, *items: Any, fail: bool = False) -> None:
        self.items = items
        self.fail = fail

    @hookimpl
    def register_tools(self, register: Any, runtime: Any) -> None:
        for item in self.items:
            register(item)
        if self.fail:
            raise RuntimeError("tool plugin bug")


def candidates(**plugins: Tools) -> list[Candidate]:
    return [Candidate(name, "tests", "entrypoint", True, (lambda p=plugin: p))
            for name, plugin in plugins.items()]


async def started(make_config: Any, plugins: dict[str, Any], **tools: Tools) -> Runtime:
    runtime = Runtime(make_config(plugins=plugins), candidates(**tools))
    await runtime.ensure_started()
    return runtime


async def test_plugins_register_tools_and_the_second_of_a_name_fails(make_config: Any) -> None:
    runtime = await started(  # pluggy calls the plugin loaded last first
        make_config, {},
        wrong=Tools("not a tool"),
        broken=Tools(echo_tool("lost"), fail=True),
        second=Tools(echo_tool("whisper"), echo_tool("echo")),
        first=Tools(echo_tool("echo"), echo_tool("shout")),
    )
    try:
        records = runtime.plugins.records
        assert records["first"].status == "ok" and "tools" in records["first"].provides
        assert records["second"].status == "failed"
        assert records["second"].error == "tool name 'echo' is already registered by plugin first"
        assert records["broken"].status == "failed"
        assert "tool plugin bug" in (records["broken"].error or "")
        assert records["wrong"].status == "failed"
        assert "expected a Tool or a Toolset, got str" in (records["wrong"].error or "")
        assert [t.name for t in runtime.tools.tools("anyone")] == ["echo", "shout"]
        assert runtime.tools.plugin_of("echo") == "first"
        result = await runtime.tools.call(call("shout", {"text": "hey"}), owner="anyone")
        assert (result.content, result.is_error) == ("hey", False)
    finally:
        await runtime.stop()


async def test_plugins_toml_enables_tools_per_plugin_and_per_owner(make_config: Any) -> None:
    config = make_config(
        core={"tool_owners": {"alice": ["*"], "*": ["echo"]}, "tool_timeout": 7},
        plugins={"first": {"tools": ["ech*"]}, "second": {"tools": False}})
    runtime = Runtime(config, candidates(
        first=Tools(echo_tool("echo"), echo_tool("shout")),
        second=Tools(echo_tool("shout")), third=Tools(echo_tool("sing"))))
    await runtime.ensure_started()
    try:
        assert runtime.tools.timeout == 7.0
        assert {r.status for r in runtime.plugins.records.values()} == {"ok"}
        assert sorted(t.name for t in runtime.tools.tools("alice")) == ["echo", "sing"]
        assert [t.name for t in runtime.tools.tools("bob")] == ["echo"]
        assert "tools" not in runtime.plugins.records["second"].provides
    finally:
        await runtime.stop()


@pytest.mark.parametrize(("tables", "message"), [
    ({"plugins": {"first": {"tools": "yes"}}},
     "[plugins.first] tools: expected true, false or a list of tool names"),
    ({"plugins": {"first": {"tools": [1]}}},
     "[plugins.first] tools: expected true, false or a list of tool names"),
    ({"core": {"tool_owners": {"alice": "echo"}}},
     "[core] tool_owners.alice: expected a list of tool names"),
    ({"core": {"tool_timeout": 0}}, "[core] tool_timeout: must be greater than 0"),
])
def test_bad_tool_settings_stop_startup_naming_the_key(
        make_config: Any, tables: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(**tables)
    assert message in str(info.value)


class Changing:
    """A toolset whose tools, health and checks the test changes."""

    name = "changing"

    def __init__(self, *items: Tool) -> None:
        self.current = list(items)
        self.down = False
        self.closed = False

    def tools(self) -> list[Tool]:
        return self.current

    async def health(self) -> dict[str, Any]:
        return {"status": "degraded", "reason": "backend away", "secret_url":
                "http://u:pw@10.0.0.1/x"} if self.down else {"status": "ok"}

    async def doctor(self) -> list[Any]:
        from core.protocols import Check

        return [Check("changing backend", "fail" if self.down else "ok", "checked")]

    async def aclose(self) -> None:
        self.closed = True


async def test_a_toolsets_tools_follow_it_and_never_take_a_name(make_config: Any) -> None:
    changing = Changing(echo_tool("dyn_one"))
    runtime = await started(make_config, {}, dynamic=Tools(changing),
                            static=Tools(echo_tool("echo")))
    try:
        assert runtime.plugins.records["dynamic"].provides == ["tools"]
        assert sorted(t.name for t in runtime.tools.tools("a")) == ["dyn_one", "echo"]
        clashing = tool(lambda text: "from the toolset", name="echo", description="")
        changing.current = [echo_tool("dyn_one"), clashing, echo_tool("dyn_two")]
        assert sorted(t.name for t in runtime.tools.tools("a")) == ["dyn_one", "dyn_two", "echo"]
        assert runtime.tools.plugin_of("echo") == "static"
        assert (await runtime.tools.call(call("echo", {"text": "x"}), owner="a")).content == "x"
        assert (await runtime.tools.call(call("dyn_two", {"text": "y"}), owner="a")).content == "y"
        changing.current = []
        assert [t.name for t in runtime.tools.tools("a")] == ["echo"]
        assert (await runtime.tools.call(call("dyn_one", {"text": "x"}), owner="a")).is_error
    finally:
        await runtime.stop()
    assert changing.closed


async def test_a_toolset_whose_tools_clash_at_start_fails_its_plugin(make_config: Any) -> None:
    dropped = Changing(echo_tool("fine"))
    runtime = await started(make_config, {"picky": {"tools": ["dyn_t*"]}},
                            late=Tools(Changing(echo_tool("echo"))),
                            broken=Tools(dropped, "not a tool"),
                            picky=Tools(Changing(echo_tool("dyn_one"), echo_tool("dyn_two"))),
                            early=Tools(echo_tool("echo")))
    try:
        assert runtime.plugins.records["late"].status == "failed"
        assert runtime.plugins.records["late"].error == \
            "tool name 'echo' is already registered by plugin early"
        assert runtime.plugins.records["broken"].status == "failed"
        assert [p for p, _ in runtime.tools.toolsets] == ["picky"]
        assert sorted(t.name for t in runtime.tools.tools("a")) == ["dyn_two", "echo"]
    finally:
        await runtime.stop()
    assert dropped.closed  # a failed plugin's toolset is still closed


async def test_a_toolsets_health_shows_only_to_authenticated_callers(make_config: Any) -> None:
    from litestar.testing import AsyncTestClient

    from core.app import create_app
    from tests.chat_support import AuthPlugin, HeaderAuthenticator

    changing = Changing(echo_tool("dyn_one"))
    found = [*candidates(dynamic=Tools(changing)),
             Candidate("header-auth", "tests", "test", True,
                       lambda: AuthPlugin(HeaderAuthenticator()))]  # type: ignore[arg-type,return-value]
    app = create_app(make_config(core={"auth": True}), candidates=found)
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        assert (await client.get("/health")).json()["status"] == "ok"
        changing.down = True
        anonymous = (await client.get("/health")).json()
        assert anonymous == {"status": "degraded", "database": {"status": "ok"}, "plugins": {
            "dynamic": {"status": "degraded"}, "header-auth": {"status": "ok"}}}
        detailed = await client.get("/health", headers={"Authorization": "Bearer alice"})
        entry = detailed.json()["plugins"]["dynamic"]
        assert entry["error"] == "backend away"
        assert entry["health"]["secret_url"] == "http://10.0.0.1/x"
        assert "pw" not in detailed.text


def test_mami_doctor_runs_the_toolsets_checks(tmp_path: Any, monkeypatch: Any,
                                               capsys: Any) -> None:
    import argparse

    import core.plugins
    from core.commands.doctor import cmd_doctor

    changing = Changing()
    changing.down = True
    monkeypatch.setattr(core.plugins, "builtin_candidates",
                        lambda: candidates(dynamic=Tools(changing)))
    monkeypatch.setattr(core.plugins, "entrypoint_candidates", lambda: [])
    from core import migrations

    (tmp_path / "data").mkdir(mode=0o700)
    url = f"sqlite:///{tmp_path / 'data' / 'mami.db'}"
    migrations.upgrade(url)
    config = tmp_path / "plugins.toml"
    config.write_text(f'[core]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{url}"\n',
                      encoding="utf-8")
    assert cmd_doctor(argparse.Namespace(config=str(config), debug=False, timeout=5.0)) == 1
    assert "FAIL  changing backend: checked" in capsys.readouterr().out


async def test_hung_sync_tools_hold_at_most_their_own_threads(monkeypatch: Any) -> None:
    import core.tools

    monkeypatch.setattr(core.tools, "TOOL_THREADS", 2)
    release = threading.Event()

    @tool(timeout=0.2)
    def stuck() -> str:
        release.wait(30)
        return "late"

    box = ToolBox()
    box.add(stuck)
    try:
        first = await asyncio.gather(*(box.call(call("stuck"), owner="o") for _ in range(2)))
        assert [error_of(r.content) for r in first] == ["tool stuck timed out after 0.2s"] * 2
        third = await box.call(call("stuck"), owner="o")
        assert error_of(third.content) == "too many tool calls are running; try again later"
        assert await asyncio.to_thread(lambda: "the default pool is free") == \
            "the default pool is free"
    finally:
        release.set()
    for _ in range(100):  # the released threads hand their slots back
        if box._threads == 0:
            break
        await asyncio.sleep(0.05)
    assert box._threads == 0


def test_mami_plugins_lists_each_plugins_tools(tmp_path: Any, monkeypatch: Any,
                                               capsys: Any) -> None:
    import argparse

    import core.plugins
    from core.cli import cmd_plugins

    monkeypatch.setattr(core.plugins, "builtin_candidates", lambda: candidates(
        static=Tools(echo_tool("echo"), echo_tool("shout")),
        dynamic=Tools(Changing(echo_tool("dyn_one"))), none=Tools()))
    monkeypatch.setattr(core.plugins, "entrypoint_candidates", lambda: [])
    config = tmp_path / "plugins.toml"
    config.write_text(f'[core]\ndata_dir = "{tmp_path / "data"}"\n\n[plugins.static]\n'
                      'tools = ["shout"]\n', encoding="utf-8")
    assert cmd_plugins(argparse.Namespace(config=str(config), json=True)) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["plugins"]}
    assert {name: row["tools"] for name, row in rows.items()} == {
        "static": ["shout"], "dynamic": ["dyn_one"], "none": []}
    assert cmd_plugins(argparse.Namespace(config=str(config), json=False)) == 0
    assert "tools: shout" in capsys.readouterr().out


async def test_a_tools_pattern_that_matches_no_tool_is_warned_about_at_start(
        make_config: Any, caplog: Any) -> None:
    """A typo in ``tools = [...]`` left a tool out without a word; now each plugin with
    such patterns gets one warning naming the file, the patterns and its tools."""
    config = make_config(plugins={
        "first": {"tools": ["ech*", "shuot"]},
        "picky": {"tools": ["dyn_*", "dyn?two", "Dyn_one"]},
        "fine": {"tools": ["sing"]},
        "off": {"tools": False},
        "gone": {"enabled": False, "tools": ["anything"]}})
    runtime = Runtime(config, candidates(
        first=Tools(echo_tool("echo"), echo_tool("shout")),
        picky=Tools(Changing(echo_tool("dyn_one"))),
        fine=Tools(echo_tool("sing")), off=Tools(echo_tool("hum")),
        gone=Tools(echo_tool("whistle"))))
    with caplog.at_level("WARNING", logger="mami"):
        await runtime.ensure_started()
        await runtime.ensure_started()
    try:
        assert sorted(t.name for t in runtime.tools.tools("a")) == ["dyn_one", "echo", "sing"]
        warned = sorted(r.getMessage() for r in caplog.records if "tools:" in r.getMessage())
        assert warned == [
            "<defaults>: [plugins.first] tools: 'shuot' matches no tool of plugin first, "
            "so it enables nothing (its tools: echo, shout)",
            "<defaults>: [plugins.picky] tools: 'dyn?two', 'Dyn_one' match no tool of "
            "plugin picky, so they enable nothing (its tools now: dyn_one)"]
        assert set(runtime.tool_pattern_problems()) == {"first", "picky"}
    finally:
        await runtime.stop()


def test_mami_doctor_lists_a_tools_pattern_that_matches_no_tool(
        tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    import argparse

    import core.plugins
    from core import migrations
    from core.commands.doctor import cmd_doctor

    monkeypatch.setattr(core.plugins, "builtin_candidates", lambda: candidates(
        static=Tools(echo_tool("echo"), echo_tool("shout")), exact=Tools(echo_tool("sing"))))
    monkeypatch.setattr(core.plugins, "entrypoint_candidates", lambda: [])
    (tmp_path / "data").mkdir(mode=0o700)
    url = f"sqlite:///{tmp_path / 'data' / 'mami.db'}"
    migrations.upgrade(url)
    config = tmp_path / "plugins.toml"
    config.write_text(f'[core]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{url}"\n\n'
                      '[plugins.static]\ntools = ["shuot", "echo"]\n\n'
                      '[plugins.exact]\ntools = ["sing"]\n', encoding="utf-8")
    cmd_doctor(argparse.Namespace(config=str(config), debug=False, timeout=5.0))
    out = capsys.readouterr().out
    assert (f"WARN  tools of static: {config}: [plugins.static] tools: 'shuot' matches no "
            "tool of plugin static, so it enables nothing (its tools: echo, shout)\n"
            "      fix: correct the pattern in [plugins.static] tools") in out, out
    assert "tools of exact" not in out
