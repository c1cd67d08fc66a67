"""Finding, loading and calling plugins.

Built-in plugins come from an explicit list (``BUILTINS`` in the package named by
``BUILTIN_PACKAGE``); third-party plugins from the ``mami`` entry-point group. Each
``[plugins.<name>]`` table of plugins.toml switches a plugin on or off and holds its
settings, checked against the plugin module's ``Settings`` dataclass. Core's own hook
implementations (``CORE_PLUGINS``: its CLI commands, the ``/image`` chat command) are
registered the same way but cannot be disabled and are not listed.

Every implementation is called on its own, through pluggy's hook execution (so an
implementation receives only the arguments it names, and pluggy's tracing and call
monitoring see every call). Anything it raises, ``SystemExit`` included, marks its
plugin ``failed`` with the reason and the app runs on without it; only a ``KeyboardInterrupt``
or the cancellation of the caller itself goes through. A configuration error (unknown
plugin, unknown setting, wrong type) raises :class:`ConfigError` instead: that is the
operator's to fix. Hook wrappers are refused (the plugin fails): mami calls each
implementation in isolation, so there is nothing for a wrapper to wrap.

``MAMI_TRACE_PLUGINS=1`` logs every hook call and result (pluggy's tracing) to the
``mami.plugins.trace`` logger at INFO.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import logging
import os
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from core import hookspecs
from core.config import PLUGIN_KEYS, Config, validate_table
from core.errors import ConfigError, hide_url_secrets

if TYPE_CHECKING:
    import argparse

    from core.chat import ChatCommand
    from core.events import ImageFinished, MessageCompleted
    from core.migrations import MigrationSource
    from core.runtime import Runtime

log = logging.getLogger("mami.plugins")
trace_log = logging.getLogger("mami.plugins.trace")

PROJECT = "mami"
BUILTIN_PACKAGE = "plugins"
CORE_PLUGINS: tuple[str, ...] = (
    "core.commands.chat", "core.commands.doctor", "core.commands.ingest", "core.commands.worker",
    "core.api.images",
)
TRACE_ENV = "MAMI_TRACE_PLUGINS"
hookimpl = pluggy.HookimplMarker(PROJECT)
T = TypeVar("T")


@dataclass
class PluginRecord:
    """What mami knows about one plugin; shown by ``mami plugins`` and ``/health``."""

    name: str
    module: str
    source: str  # "builtin" or "entrypoint"
    enabled: bool
    status: str = "pending"  # ok, disabled, failed
    error: str | None = None
    settings: Any = None
    provides: list[str] = field(default_factory=list)
    off: dict[str, str] = field(default_factory=dict)
    """Why the plugin registers no provider of a kind it could provide (kind: reason),
    as it said through :meth:`core.runtime.Runtime.provider_off`."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "source": self.source,
            "enabled": self.enabled,
            "status": self.status,
            "error": self.error,
            "provides": self.provides,
            "off": self.off,
        }


@dataclass(frozen=True)
class Candidate:
    name: str
    module: str
    source: str
    default_enabled: bool
    load: Callable[[], ModuleType]


class PluginBroken(Exception):
    """A plugin's own mistake (not the operator's): the plugin fails, the app runs on."""


def builtin_candidates(package: str = BUILTIN_PACKAGE) -> list[Candidate]:
    """Built-in plugins as listed by ``<package>.BUILTINS``: ``{name: (module, enabled)}``."""
    try:
        listing = importlib.import_module(package).BUILTINS
    except (ImportError, AttributeError):
        return []
    return [
        Candidate(name, module, "builtin", default, partial(importlib.import_module, module))
        for name, (module, default) in listing.items()
    ]


def entrypoint_candidates() -> list[Candidate]:
    """Third-party plugins declared under ``[project.entry-points.mami]``."""
    found = []
    for ep in entry_points(group=PROJECT):
        found.append(Candidate(ep.name, ep.value, "entrypoint", True, ep.load))
    return found


def contained(exc: BaseException) -> bool:
    """Whether an exception raised by plugin code is that plugin's failure (contain it)
    rather than the process being stopped: a ``KeyboardInterrupt`` or the cancellation
    of the calling task itself is never contained; ``SystemExit``, ``GeneratorExit`` and
    a ``CancelledError`` the plugin raised on its own are."""
    if isinstance(exc, KeyboardInterrupt):
        return False
    if isinstance(exc, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return True
        return task is None or task.cancelling() == 0
    return True


class PluginExit(Exception):
    """A ``SystemExit`` (or another non-``Exception``) raised by plugin code inside a
    task, carried as an ordinary exception: asyncio re-raises ``SystemExit`` from a task
    straight out of the event loop, which would stop the server."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def describe(exc: BaseException) -> str:
    if isinstance(exc, PluginExit):
        exc = exc.original
    return hide_url_secrets(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__


async def _guarded(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise
    except Exception:
        raise
    except BaseException as exc:
        raise PluginExit(exc) from exc


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """Await ``awaitable`` for at most ``seconds``, else raise :class:`TimeoutError`.

    On timeout the work is cancelled but not waited for, so code that ignores or
    swallows cancellation (or blocks a thread) cannot hold the caller past the limit. A
    ``SystemExit`` from the work arrives as :class:`PluginExit`.
    """
    task = asyncio.ensure_future(_guarded(awaitable))
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise TimeoutError
    return task.result()


SLOW_HOOK_NOTICE = 15.0
"""Seconds between the warnings that a plugin's ``startup`` or ``shutdown`` still runs."""


class HookTimedOut(Exception):
    """A ``startup`` ran past ``[core] startup_timeout``."""


async def _noting_slow(awaitable: Awaitable[Any], plugin: str, hook_name: str,
                       limit: float | None = None) -> Any:
    """Await a ``startup`` or ``shutdown`` to its end, logging every
    :data:`SLOW_HOOK_NOTICE` seconds that it still runs, naming the plugin: one that
    waits forever (a server that never answers) otherwise holds the whole app at
    "Waiting for application startup" without a word. After ``limit`` seconds the work
    is cancelled (not waited for: it may ignore cancellation) and :class:`HookTimedOut`
    raised."""
    task = asyncio.ensure_future(_guarded(awaitable))
    waited = 0.0
    try:
        while True:
            pause = SLOW_HOOK_NOTICE if limit is None else min(SLOW_HOOK_NOTICE, limit - waited)
            done, _ = await asyncio.wait({task}, timeout=pause)
            if done:
                return task.result()
            waited += pause
            if limit is not None and waited >= limit:
                task.cancel()
                task.add_done_callback(_retrieve)
                raise HookTimedOut(f"timed out after {limit:g}s ([core] startup_timeout; "
                                   "raise it if the plugin needs longer)")
            log.warning("plugin %s: %s still running after %gs; mami waits for it%s (set "
                        "[plugins.%s] enabled = false to start without it)",
                        plugin, hook_name, waited,
                        "" if limit is None else f" up to {limit:g}s", plugin)
    except asyncio.CancelledError:
        task.cancel()
        raise


def _unmarked_hooks(module: ModuleType) -> list[str]:
    """Functions of a plugin module named after a hook but without ``@hookimpl``: pluggy
    ignores them silently, so the plugin would load "ok" and do nothing."""
    names = [name for name in dir(hookspecs) if not name.startswith("_")
             and hasattr(getattr(hookspecs, name), f"{PROJECT}_spec")]
    return [name for name in names if inspect.isfunction(getattr(module, name, None))
            and not hasattr(getattr(module, name), f"{PROJECT}_impl")]


class PluginHost:
    """A fresh pluggy manager plus the record of every plugin.

    Its typed methods, one per hook (``register_llm_providers`` ... ``image_finished``),
    are the only way the rest of mami calls hooks.
    """

    def __init__(self, config: Config, candidates: Iterable[Candidate] | None = None) -> None:
        self.config = config
        self.pm = pluggy.PluginManager(PROJECT)
        self.running: tuple[str, str] | None = None
        """``(plugin, hook)`` of the ``startup`` or ``shutdown`` hook running now."""
        self.pm.add_hookspecs(hookspecs)
        self.tracing = os.environ.get(TRACE_ENV, "").strip() not in ("", "0")
        if self.tracing:
            self.pm.trace.root.setwriter(lambda text: trace_log.info("%s", text.rstrip()))
            self.pm.enable_tracing()
        self.records: dict[str, PluginRecord] = {}
        self._migrations: list[tuple[str, MigrationSource]] | None = None
        cands = list(candidates) if candidates is not None else (
            builtin_candidates() + entrypoint_candidates()
        )
        self._load_core()
        self._load(cands)

    def _load_core(self) -> None:
        for module in CORE_PLUGINS:
            self.pm.register(importlib.import_module(module), name=module)

    def _load(self, candidates: list[Candidate]) -> None:
        by_name: dict[str, Candidate] = {}
        for cand in candidates:
            by_name.setdefault(cand.name, cand)
        for name in self.config.plugins:
            if name not in by_name:
                raise ConfigError(
                    f"{self.config.source}: [plugins.{name}]: unknown plugin "
                    f"(installed: {', '.join(sorted(by_name)) or 'none'})"
                )
        for cand in by_name.values():
            enabled = self.config.plugin_enabled(cand.name, cand.default_enabled)
            record = PluginRecord(cand.name, cand.module, cand.source, enabled)
            self.records[cand.name] = record
            if not enabled:
                record.status = "disabled"
                self.pm.set_blocked(cand.name)
                continue
            self._load_one(cand, record)
        while True:  # a misspelled hook implementation fails its plugin, not the app
            try:
                self.pm.check_pending()
                break
            except pluggy.PluginValidationError as exc:
                bad = self.pm.get_name(exc.plugin) if exc.plugin else None
                if not bad:
                    raise
                self.fail(bad, f"unknown hook: {exc}")

    def _load_one(self, cand: Candidate, record: PluginRecord) -> None:
        try:
            module = cand.load()
        except BaseException as exc:
            if not contained(exc):
                raise
            self.fail(cand.name, f"import failed: {describe(exc)}")
            return
        try:
            record.settings = self._settings_for(cand.name, module)
        except PluginBroken as exc:
            self.fail(cand.name, str(exc))
            return
        try:
            self.pm.register(module, name=cand.name)
        except BaseException as exc:
            if not contained(exc):
                raise
            self.fail(cand.name, f"registration failed: {exc}")
            return
        wrappers = [impl.function.__name__ for impl in self._plugin_impls(cand.name)
                    if impl.hookwrapper or impl.wrapper]
        if wrappers:
            self.fail(cand.name, f"hook wrappers are not supported ({', '.join(wrappers)}): "
                                 "mami calls each implementation on its own; implement the "
                                 "hook without wrapper=True/hookwrapper=True")
            return
        unmarked = _unmarked_hooks(module)
        if unmarked:
            self.fail(cand.name, f"{', '.join(unmarked)} named like a hook but not marked: "
                                 "decorate it with @hookimpl (from core import hookimpl), or "
                                 "rename it; mami would never call it")
            return
        record.status = "ok"

    def _plugin_impls(self, name: str) -> list[pluggy.HookImpl]:
        plugin = self.pm.get_plugin(name)
        callers = (self.pm.get_hookcallers(plugin) or []) if plugin is not None else []
        return [impl for caller in callers for impl in caller.get_hookimpls()
                if impl.plugin_name == name]

    def _settings_for(self, name: str, module: ModuleType) -> Any:
        """The plugin's checked settings. The operator's mistakes (unknown key, wrong
        type, a value ``__post_init__`` rejects with ConfigError) raise ConfigError; a
        broken ``Settings`` class raises :class:`PluginBroken`."""
        schema = getattr(module, "Settings", None)
        table = {k: v for k, v in self.config.plugins.get(name, {}).items()
                 if k not in PLUGIN_KEYS}
        if schema is None:
            if table:
                key = next(iter(table))
                raise ConfigError(
                    f"{self.config.source}: [plugins.{name}] {key}: this plugin takes no settings"
                )
            return None
        if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
            raise PluginBroken("its Settings is not a dataclass")
        try:
            typing.get_type_hints(schema)
        except BaseException as exc:
            if not contained(exc):
                raise
            raise PluginBroken(f"its Settings annotations cannot be resolved: {describe(exc)} "
                               "(a name imported only under TYPE_CHECKING?)") from exc
        try:
            return validate_table(schema, table, self.config.source, f"plugins.{name}")
        except ConfigError:
            raise
        except BaseException as exc:
            if not contained(exc):
                raise
            raise PluginBroken(f"its Settings failed: {describe(exc)}") from exc

    def fail(self, name: str, error: str) -> None:
        """Mark a plugin failed, unregister it and log the reason."""
        error = hide_url_secrets(error)
        log.error("plugin %s failed: %s", name, error)
        record = self.records.get(name)
        if record is None or record.status == "failed":
            return
        record.status = "failed"
        record.error = error
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)

    def settings(self, name: str) -> Any:
        record = self.records.get(name)
        return record.settings if record else None

    # -- calling implementations ------------------------------------------------------

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        caller = getattr(self.pm.hook, hook_name)
        # pluggy calls implementations last-registered first, honouring tryfirst/trylast.
        return list(reversed(caller.get_hookimpls()))

    def _call(self, impl: pluggy.HookImpl, hook_name: str, kwargs: dict[str, Any]) -> Any:
        """One implementation through pluggy's own execution: it binds only the
        arguments the implementation names, and tracing and monitoring see the call."""
        if self.tracing:
            trace_log.info("%s: plugin %s", hook_name, impl.plugin_name)
        results = self.pm._hookexec(hook_name, [impl], kwargs, False)
        assert isinstance(results, list)  # firstresult=False: a list of non-None results
        return results[0] if results else None

    def _each(self, hook_name: str, kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
        """``(plugin, result)`` of every implementation; one that raises fails its plugin."""
        results = []
        for impl in self._impls(hook_name):
            try:
                results.append((impl.plugin_name, self._call(impl, hook_name, kwargs)))
            except BaseException as exc:
                if not contained(exc):
                    raise
                self.fail(impl.plugin_name, f"{hook_name} failed: {describe(exc)}")
        return results

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a ``register_*`` hook plugin by plugin; return ``(plugin, object)`` pairs.

        A plugin that raises is marked failed; what it registered is discarded.
        """
        found: list[tuple[str, Any]] = []
        for impl in self._impls(hook_name):
            mine: list[Any] = []
            try:
                self._call(impl, hook_name, {"register": mine.append, **kwargs})
            except BaseException as exc:
                if not contained(exc):
                    raise
                self.fail(impl.plugin_name, f"{hook_name} failed: {describe(exc)}")
                continue
            found.extend((impl.plugin_name, obj) for obj in mine)
        return found

    async def _run_each(self, hook_name: str, kwargs: dict[str, Any],
                        on_error: Callable[[str, str], None], limit: float | None = None
                        ) -> None:
        for impl in self._impls(hook_name):
            self.running = (impl.plugin_name, hook_name)
            try:
                result = self._call(impl, hook_name, kwargs)
                if inspect.isawaitable(result):
                    await _noting_slow(result, impl.plugin_name, hook_name, limit)
            except HookTimedOut as exc:
                on_error(impl.plugin_name, str(exc))
            except BaseException as exc:
                if not contained(exc):
                    raise
                on_error(impl.plugin_name, describe(exc))
            finally:
                self.running = None

    async def fire(self, hook_name: str, timeout: float, **kwargs: Any) -> list[tuple[str, str]]:
        """Deliver an event to every implementation concurrently, each on its own with
        ``timeout`` seconds (a synchronous one runs in a thread, so a blocking call does
        not hold the event loop).

        Returns ``(plugin, error)`` for each implementation that raised or timed out;
        those errors are logged and never propagate.
        """
        impls = self._impls(hook_name)
        outcomes = await asyncio.gather(
            *(self._deliver(impl, hook_name, timeout, kwargs) for impl in impls))
        errors = [(impl.plugin_name, error) for impl, error in zip(impls, outcomes, strict=True)
                  if error is not None]
        for plugin_name, error in errors:
            log.error("%s handler of plugin %s failed: %s", hook_name, plugin_name, error)
        return errors

    async def _deliver(self, impl: pluggy.HookImpl, hook_name: str, timeout: float,
                       kwargs: dict[str, Any]) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if inspect.iscoroutinefunction(impl.function):
                result = self._call(impl, hook_name, kwargs)
            else:
                result = await within(
                    asyncio.to_thread(self._call, impl, hook_name, kwargs), timeout)
            if inspect.isawaitable(result):
                await within(result, max(0.0, deadline - loop.time()))
        except TimeoutError:
            return f"timed out after {timeout:g}s"
        except BaseException as exc:
            if not contained(exc):
                raise
            return describe(exc)
        return None

    # -- the typed facade: one method per hook ----------------------------------------

    def register_llm_providers(self, runtime: Runtime) -> list[tuple[str, Any]]:
        return self.collect("register_llm_providers", runtime=runtime)

    def register_retrievers(self, runtime: Runtime) -> list[tuple[str, Any]]:
        return self.collect("register_retrievers", runtime=runtime)

    def register_memory_stores(self, runtime: Runtime) -> list[tuple[str, Any]]:
        return self.collect("register_memory_stores", runtime=runtime)

    def register_image_generators(self, runtime: Runtime) -> list[tuple[str, Any]]:
        return self.collect("register_image_generators", runtime=runtime)

    def register_authenticators(self, runtime: Runtime) -> list[tuple[str, Any]]:
        return self.collect("register_authenticators", runtime=runtime)

    def register_chat_commands(self, runtime: Runtime) -> list[tuple[str, ChatCommand]]:
        return self.collect("register_chat_commands", runtime=runtime)

    def register_tools(self, runtime: Runtime) -> list[tuple[str, Any]]:
        """``(plugin, tool or toolset)`` pairs; the runtime checks and keeps them."""
        return self.collect("register_tools", runtime=runtime)

    def register_migrations(self) -> list[tuple[str, MigrationSource]]:
        """``(plugin, source)`` per migration chain. Something other than a
        :class:`~core.migrations.MigrationSource`, or a branch another plugin already
        registered, fails the plugin (naming the other one). Collected once per host."""
        if self._migrations is not None:
            return self._migrations
        from core.migrations import MigrationSource

        found: list[tuple[str, MigrationSource]] = []
        owners: dict[str, str] = {}
        for plugin, source in self.collect("register_migrations"):
            if not isinstance(source, MigrationSource):
                self.fail(plugin, f"register_migrations: expected a MigrationSource, got "
                                  f"{type(source).__name__}")
            elif source.branch in owners and owners[source.branch] != plugin:
                self.fail(plugin, f"migration branch {source.branch} is already registered "
                                  f"by plugin {owners[source.branch]}")
            else:
                owners[source.branch] = plugin
                found.append((plugin, source))
        self._migrations = [(plugin, source) for plugin, source in found
                            if self.records.get(plugin) is None
                            or self.records[plugin].status != "failed"]
        return self._migrations

    def register_routes(self, runtime: Runtime) -> list[tuple[str, list[Any]]]:
        """``(plugin, handlers)`` per plugin that returned some; a result that is not a
        list fails its plugin."""
        found = []
        for plugin, handlers in self._each("register_routes", {"runtime": runtime}):
            if not isinstance(handlers, list | tuple):
                self.fail(plugin, f"register_routes returned {type(handlers).__name__}, "
                                  "not a list of route handlers")
            elif handlers:
                found.append((plugin, list(handlers)))
        return found

    def register_commands(self, subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        self._each("register_commands", {"subparsers": subparsers})

    async def startup(self, runtime: Runtime) -> None:
        """Run every ``startup`` hook; a plugin whose startup fails is marked failed."""
        await self._run_each("startup", {"runtime": runtime},
                             lambda plugin, error: self.fail(plugin, f"startup failed: {error}"),
                             self.config.core.startup_timeout)

    async def shutdown(self, runtime: Runtime) -> None:
        """Run every ``shutdown`` hook; errors are logged."""
        await self._run_each(
            "shutdown", {"runtime": runtime},
            lambda plugin, error: log.error("shutdown of plugin %s failed: %s", plugin, error))

    async def message_completed(self, event: MessageCompleted, runtime: Runtime,
                                timeout: float) -> list[tuple[str, str]]:
        return await self.fire("message_completed", timeout, event=event, runtime=runtime)

    async def image_finished(self, event: ImageFinished, runtime: Runtime,
                             timeout: float) -> list[tuple[str, str]]:
        return await self.fire("image_finished", timeout, event=event, runtime=runtime)

    def status(self) -> str:
        """``ok`` when every enabled plugin runs, else ``degraded``."""
        bad = any(r.status == "failed" for r in self.records.values())
        return "degraded" if bad else "ok"
