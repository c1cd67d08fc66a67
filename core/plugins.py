"""Finding, loading and calling plugins.

Built-in plugins come from an explicit list (``BUILTINS`` in the package named by
``BUILTIN_PACKAGE``); third-party plugins from the ``mami`` entry-point group. Each
``[plugins.<name>]`` table of plugins.toml switches a plugin on or off and holds its
settings, checked against the plugin module's ``Settings`` dataclass.

A plugin that fails to import, to register or to start is recorded as ``failed``
with its error and the app runs on without it. A configuration error (unknown plugin,
bad setting) raises :class:`ConfigError` instead: that is the operator's to fix.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from core import hookspecs
from core.config import Config, validate_table
from core.errors import ConfigError

log = logging.getLogger("mami.plugins")

PROJECT = "mami"
BUILTIN_PACKAGE = "plugins"
hookimpl = pluggy.HookimplMarker(PROJECT)


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "source": self.source,
            "enabled": self.enabled,
            "status": self.status,
            "error": self.error,
            "provides": self.provides,
        }


@dataclass(frozen=True)
class Candidate:
    name: str
    module: str
    source: str
    default_enabled: bool
    load: Callable[[], ModuleType]


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


class PluginHost:
    """A fresh pluggy manager plus the record of every plugin.

    The typed methods (``collect``, ``call_each``, ``fire``) are the only way the rest
    of mami calls hooks.
    """

    def __init__(self, config: Config, candidates: Iterable[Candidate] | None = None) -> None:
        self.config = config
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        cands = list(candidates) if candidates is not None else (
            builtin_candidates() + entrypoint_candidates()
        )
        self._load(cands)

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
            try:
                module = cand.load()
            except Exception as exc:
                self.fail(cand.name, f"import failed: {type(exc).__name__}: {exc}")
                continue
            record.settings = self._settings_for(cand.name, module)
            try:
                self.pm.register(module, name=cand.name)
            except Exception as exc:
                self.fail(cand.name, f"registration failed: {exc}")
                continue
            record.status = "ok"
        while True:  # a misspelled hook implementation fails its plugin, not the app
            try:
                self.pm.check_pending()
                break
            except pluggy.PluginValidationError as exc:
                bad = self.pm.get_name(exc.plugin) if exc.plugin else None
                if not bad:
                    raise
                self.fail(bad, f"unknown hook: {exc}")

    def _settings_for(self, name: str, module: ModuleType) -> Any:
        schema = getattr(module, "Settings", None)
        table = {k: v for k, v in self.config.plugins.get(name, {}).items() if k != "enabled"}
        if schema is None:
            if table:
                key = next(iter(table))
                raise ConfigError(
                    f"{self.config.source}: [plugins.{name}] {key}: this plugin takes no settings"
                )
            return None
        return validate_table(schema, table, self.config.source, f"plugins.{name}")

    def fail(self, name: str, error: str) -> None:
        """Mark a plugin failed, unregister it and log the reason."""
        record = self.records.get(name)
        if record is None:
            return
        record.status = "failed"
        record.error = error
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        log.error("plugin %s failed: %s", name, error)

    def settings(self, name: str) -> Any:
        record = self.records.get(name)
        return record.settings if record else None

    def _impls(self, hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
        caller = getattr(self.pm.hook, hook_name)
        # pluggy calls implementations last-registered first, honouring tryfirst/trylast.
        return [(impl.plugin_name, impl.function) for impl in reversed(caller.get_hookimpls())]

    def collect(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a ``register_*`` hook plugin by plugin; return ``(plugin, object)`` pairs.

        A plugin that raises is marked failed; what it registered is discarded.
        """
        found: list[tuple[str, Any]] = []
        for plugin_name, function in self._impls(hook_name):
            mine: list[Any] = []
            try:
                function(register=mine.append, **kwargs)
            except Exception as exc:
                self.fail(plugin_name, f"{hook_name} failed: {type(exc).__name__}: {exc}")
                continue
            found.extend((plugin_name, obj) for obj in mine)
        return found

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a hook plugin by plugin, returning ``(plugin, result)``; errors mark the
        plugin failed."""
        results = []
        for plugin_name, function in self._impls(hook_name):
            try:
                results.append((plugin_name, function(**kwargs)))
            except Exception as exc:
                self.fail(plugin_name, f"{hook_name} failed: {type(exc).__name__}: {exc}")
        return results

    async def start(self, **kwargs: Any) -> None:
        """Run every ``startup`` hook; a plugin whose startup fails is marked failed."""
        for plugin_name, function in self._impls("startup"):
            try:
                result = function(**kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                self.fail(plugin_name, f"startup failed: {type(exc).__name__}: {exc}")

    async def fire(self, hook_name: str, timeout: float, **kwargs: Any) -> list[tuple[str, str]]:
        """Deliver an event to each implementation on its own, with a timeout.

        Returns ``(plugin, error)`` for each implementation that raised or timed out;
        those errors are logged and never propagate.
        """
        errors: list[tuple[str, str]] = []
        for plugin_name, function in self._impls(hook_name):
            try:
                result = function(**kwargs)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, timeout)  # type: ignore[arg-type]
            except TimeoutError:
                errors.append((plugin_name, f"timed out after {timeout:g}s"))
            except Exception as exc:
                errors.append((plugin_name, f"{type(exc).__name__}: {exc}"))
        for plugin_name, error in errors:
            log.error("%s handler of plugin %s failed: %s", hook_name, plugin_name, error)
        return errors

    def status(self) -> str:
        """``ok`` when every enabled plugin runs, else ``degraded``."""
        bad = any(r.status == "failed" for r in self.records.values())
        return "degraded" if bad else "ok"
