"""Meta-tests: every hookspec is documented and called through the plugin manager."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import pytest

from core import hookspecs
from core.events import ImageFinished, MessageCompleted
from core.plugins import PluginHost, entrypoint_candidates
from core.protocols import GenerationParams

pytestmark = pytest.mark.usefixtures("sample_plugins")


HOOKS = sorted(
    name for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "mami_spec")
)


def test_every_hookspec_is_typed_and_documented() -> None:
    assert len(HOOKS) >= 10
    for name in HOOKS:
        spec = getattr(hookspecs, name)
        assert (spec.__doc__ or "").strip(), f"{name} has no docstring"
        params = inspect.signature(spec).parameters
        assert set(spec.__annotations__) == {*params, "return"}, f"{name} is not fully typed"


def _host(make_config: Any) -> PluginHost:
    """The sample plugins (and the notes plugin, when its site is on the path)."""
    return PluginHost(make_config(plugins={"broken-startup": {"enabled": False}}),
                      entrypoint_candidates())


def test_the_host_has_one_typed_method_per_hook() -> None:
    for name in HOOKS:
        method = getattr(PluginHost, name, None)
        assert callable(method), f"PluginHost has no facade method for {name}"
        spec = set(inspect.signature(getattr(hookspecs, name)).parameters) - {"register"}
        facade = set(inspect.signature(method).parameters) - {"self", "timeout"}
        assert facade == spec, f"PluginHost.{name} takes {facade}, the hook {spec}"


async def test_every_hook_is_called_through_the_facade(
    make_config: Any, notes: Any
) -> None:
    from mami_sample.good import Registry

    Registry.calls.clear()
    host = _host(make_config)
    runtime: Any = None
    called: set[str] = set()

    registered = [obj for name in HOOKS if name.startswith("register_")
                  and name not in ("register_routes", "register_commands",
                                   "register_chat_commands", "register_migrations")
                  for _, obj in getattr(host, name)(runtime)]
    called |= {name for name in HOOKS if name.startswith("register_")} - {
        "register_routes", "register_commands", "register_chat_commands", "register_migrations"}
    names = {getattr(p, "name", "") for p in registered}
    assert {"sample-echo", "sample-images"} <= names
    echo = next(p for p in registered if p.name == "sample-echo")
    from core.protocols import ChatMessage

    deltas = [d.text async for d in echo.stream([ChatMessage("user", "a b")], GenerationParams())]
    assert "".join(deltas) == "a b "

    routes = host.register_routes(runtime)
    assert [r.paths for _, group in routes for r in group] == [{"/sample/hello"}]
    called.add("register_routes")

    parser = argparse.ArgumentParser()
    host.register_commands(parser.add_subparsers())
    assert parser.parse_args(["sample-hello"]).func is not None
    assert parser.parse_args(["chat", "hi"]).func is not None  # core's own, the same way
    called.add("register_commands")

    commands = {plugin: command.name for plugin, command in host.register_chat_commands(runtime)}
    assert commands == {"sample": "shout", "notes": "notes", "core.api.images": "image"}
    called.add("register_chat_commands")

    sources = host.register_migrations()
    assert [(plugin, source.branch) for plugin, source in sources] == [("notes", "notes")]
    called.add("register_migrations")

    await host.startup(runtime)
    await host.shutdown(runtime)
    called |= {"startup", "shutdown"}

    event = MessageCompleted("o", "c1", "m1", "u1", "hi", "hello")
    assert await host.message_completed(event, runtime, 5.0) == []
    assert await host.image_finished(ImageFinished("o", "j1", "succeeded"), runtime, 5.0) == []
    called |= {"message_completed", "image_finished"}

    assert called == set(HOOKS)
    for expected in ("register_retrievers", "register_memory_stores", "register_authenticators",
                     "startup", "shutdown", "message_completed:m1", "image_finished:j1"):
        assert expected in Registry.calls
    assert {r.status for r in host.records.values()} == {"ok", "disabled", "failed"}
    assert [n for n, r in host.records.items() if r.status == "failed"] == ["broken-import"]


async def test_events_are_isolated_per_implementation(make_config: Any) -> None:
    """A raising or hanging subscriber is reported and does not stop the others."""
    from mami_sample.good import Registry

    from core import hookimpl

    class Raises:
        @hookimpl
        def message_completed(self, event: Any, runtime: Any) -> None:
            raise ValueError("subscriber bug")

    class Hangs:
        @hookimpl
        async def message_completed(self, event: Any, runtime: Any) -> None:
            import asyncio

            await asyncio.sleep(60)

    Registry.calls.clear()
    host = _host(make_config)
    host.pm.register(Raises(), name="raises")
    host.pm.register(Hangs(), name="hangs")
    errors = await host.fire(
        "message_completed", 0.2, event=MessageCompleted("o", "c", "m9", "u", "a", "b"),
        runtime=None,
    )
    assert dict(errors) == {"raises": "ValueError: subscriber bug", "hangs": "timed out after 0.2s"}
    assert "message_completed:m9" in Registry.calls


def _reference() -> dict[str, str]:
    """docs/plugins.md's hook sections: ``{hook: section text}``."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text("utf-8")
    hooks_part = text.split("\n## Hooks\n", 1)[1]
    sections = re.split(r"^### ", hooks_part, flags=re.M)[1:]
    return {section.split("(", 1)[0].strip("`"): section for section in sections}


def test_the_reference_page_documents_every_hook_exactly() -> None:
    import ast
    import re

    reference = _reference()
    assert sorted(reference) == HOOKS
    for name, section in reference.items():
        heading = section.splitlines()[0]
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert heading == f"`{name}({', '.join(params)})`", heading
        body = section.split("```python", 1)
        assert len(body) == 2 and len(body[0].split()) >= 15, f"{name}: say when and what"
        example = ast.parse(body[1].split("```", 1)[0])
        defs = [node for node in ast.walk(example)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name]
        assert defs, f"{name}: the example does not implement the hook"
        taken = [arg.arg for arg in defs[0].args.args]
        assert set(taken) <= set(params), f"{name}: example takes {taken}"
        assert re.search(r"@hookimpl", body[1]), f"{name}: the example has no @hookimpl"
