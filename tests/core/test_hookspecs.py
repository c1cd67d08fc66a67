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
    return PluginHost(make_config(plugins={"broken-startup": {"enabled": False}}),
                      entrypoint_candidates())


async def _settle(result: Any) -> Any:
    return [await r if inspect.isawaitable(r) else r for r in result]


async def test_every_hook_is_called_through_the_plugin_manager(make_config: Any) -> None:
    from mami_sample.good import Registry

    Registry.calls.clear()
    host = _host(make_config)
    hook = host.pm.hook
    called: set[str] = set()

    registered: list[Any] = []
    for name in HOOKS:
        if name.startswith("register_") and name not in ("register_routes", "register_commands"):
            getattr(hook, name)(register=registered.append, runtime=None)
            called.add(name)
    names = {getattr(p, "name", "") for p in registered}
    assert {"sample-echo", "sample-images"} <= names
    echo = next(p for p in registered if p.name == "sample-echo")
    from core.protocols import ChatMessage

    deltas = [d.text async for d in echo.stream([ChatMessage("user", "a b")], GenerationParams())]
    assert "".join(deltas) == "a b "

    routes = hook.register_routes(runtime=None)
    assert [r.paths for group in routes for r in group] == [{"/sample/hello"}]
    called.add("register_routes")

    parser = argparse.ArgumentParser()
    hook.register_commands(subparsers=parser.add_subparsers())
    assert parser.parse_args(["sample-hello"]).func is not None
    called.add("register_commands")

    await _settle(hook.startup(runtime=None))
    await _settle(hook.shutdown(runtime=None))
    called |= {"startup", "shutdown"}

    event = MessageCompleted("o", "c1", "m1", "u1", "hi", "hello")
    await _settle(hook.message_completed(event=event, runtime=None))
    await _settle(hook.image_finished(event=ImageFinished("o", "j1", "succeeded"), runtime=None))
    called |= {"message_completed", "image_finished"}

    assert called == set(HOOKS)
    for expected in ("register_retrievers", "register_memory_stores", "register_authenticators",
                     "startup", "shutdown", "message_completed:m1", "image_finished:j1"):
        assert expected in Registry.calls


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
