"""The runtime: configuration, plugins, database and the active providers of one app.

It is created without I/O (so Lambda can build it at import time) and started lazily
by :meth:`Runtime.ensure_started`, which opens the database, registers providers and
runs the plugins' ``startup`` hooks exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError

from core import migrations
from core.config import Config
from core.db import Database
from core.errors import ConfigError, PluginUnavailable, hide_url_secrets_in_logs
from core.models import EventReceipt
from core.plugins import Candidate, PluginHost, describe
from core.protocols import (
    Authenticator,
    ImageGenerator,
    LLMProvider,
    MemoryStore,
    Retriever,
    protocol_problems,
)
from core.tools import ToolBox, ToolRejected

if TYPE_CHECKING:
    from core.chat import ChatCommand
    from core.events import ImageFinished, MessageCompleted

log = logging.getLogger("mami")

PROVIDER_HOOKS: dict[str, tuple[str, str]] = {
    # kind: (hook, [core] key that picks the active one)
    "llm": ("register_llm_providers", "llm"),
    "retriever": ("register_retrievers", "retriever"),
    "memory": ("register_memory_stores", "memory"),
    "images": ("register_image_generators", "images"),
    "auth": ("register_authenticators", ""),
}


class SchemaBehind(ConfigError):
    """The database schema is older than the code."""


class SchemaAhead(ConfigError):
    """The database schema is at a revision the code does not have (a newer mami's)."""


_loaded_hosts: list[PluginHost] = []
_handed_over: weakref.WeakSet[PluginHost] = weakref.WeakSet()


def reuse_plugin_host(host: PluginHost) -> None:
    """Hand ``host`` (its plugins loaded, their load failures logged) to the next
    :class:`Runtime` built for an equal configuration without explicit candidates,
    instead of loading every plugin again. The CLI loads the plugins to find their
    commands before the command builds its runtime: loading twice logged each plugin's
    failure twice. A host is handed over once (one that a runtime used is not fresh)."""
    _loaded_hosts[:] = [] if host in _handed_over else [host]


def _plugin_host(config: Config, candidates: list[Candidate] | None) -> PluginHost:
    if candidates is None and _loaded_hosts and _loaded_hosts[0].config == config:
        host = _loaded_hosts.pop()
        _handed_over.add(host)
        return host
    return PluginHost(config, candidates)


class Runtime:
    """Everything a request handler or plugin needs, for one app instance."""

    def __init__(
        self, config: Config, candidates: list[Candidate] | None = None, *, serverless: bool = False
    ) -> None:
        hide_url_secrets_in_logs()
        self.config = config
        self.serverless = serverless
        self.repair_on_start = True
        """Whether starting heals what a killed process left (answers left streaming,
        plugins' own repairs) and does a plugin's first-start set-up (such as printing a
        first admin token); ``mami doctor`` and ``mami plugins`` turn it off, as they
        change nothing, and so does ``mami chat``, one turn beside the server (the first
        ``mami serve`` prints the sign-in URL with the first admin token)."""
        self.plugins = _plugin_host(config, candidates)
        self.db = Database(config.database_url, config.data_dir)
        self.providers: dict[str, dict[str, Any]] = {kind: {} for kind in PROVIDER_HOOKS}
        self.provider_plugin: dict[int, str] = {}
        self.chat_commands: dict[str, ChatCommand] = {}
        self._command_owner: dict[str, str] = {}
        self.tools = ToolBox.from_config(config)
        self.started = False
        self._start_lock = asyncio.Lock()
        self.state: dict[str, Any] = {}  # plugins may keep per-app objects here

    def settings(self, plugin: str) -> Any:
        """The checked ``[plugins.<plugin>]`` settings (a dataclass), or ``None``."""
        return self.plugins.settings(plugin)

    async def ensure_started(self) -> None:
        """Start once: check or migrate the schema, register providers, run startup hooks."""
        if self.started:
            return
        async with self._start_lock:
            if self.started:
                return
            await asyncio.to_thread(self.prepare_schema)
            self.register_providers()
            self.register_chat_commands()
            await self.plugins.startup(self)
            self._drop_failed_providers()
            self.register_tools()
            self._drop_failed_providers()
            await self._finish_abandoned()
            self.started = True

    async def _finish_abandoned(self) -> None:
        """Answers a killed process left ``streaming`` become ``interrupted`` (their
        saved text kept); a failure here is logged, never fatal."""
        from core.chat import finish_abandoned

        if not self.repair_on_start:
            return
        try:
            self.state["chat.abandoned_finished"] = await finish_abandoned(self)
        except Exception as exc:
            log.warning("finishing abandoned answers failed: %s", exc)

    def prepare_schema(self) -> None:
        """Upgrade a SQLite database to head when allowed; otherwise refuse a core schema
        that is behind, naming the command that fixes it. A plugin whose own tables are
        behind (or whose migrations fail) is marked failed; the app runs on. Once a chain
        needs upgrading, the rest runs under :func:`~core.migrations.schema_lock`, each
        chain read again there: a process started beside this one (``mami serve``,
        ``mami db upgrade``) may have upgraded it meanwhile."""
        url = self.db.url
        auto = self.db.is_sqlite and self.config.core.auto_migrate
        current = migrations.current_revision(url)
        head = migrations.head_revision()
        if migrations.is_ahead(current):
            raise SchemaAhead(str(migrations.schema_problem(current, head)))
        if current != head and not auto:
            raise SchemaBehind(
                f"database schema is at {current or 'nothing'} but mami needs {head}: "
                "run `mami db upgrade`"
            )
        with contextlib.ExitStack() as held:

            def lock() -> None:  # on the first upgrade only (a start at head waits for none)
                held.enter_context(migrations.schema_lock(url))  # re-entrant: no-op after

            if current != head:
                lock()
                current = migrations.current_revision(url)
                if migrations.is_ahead(current):
                    raise SchemaAhead(str(migrations.schema_problem(current, head)))
                if current != head:
                    log.info("upgrading database schema %s -> %s", current, head)
                    migrations.upgrade(url)
            for plugin_name, source in self.plugins.register_migrations():
                try:
                    mine = migrations.current_revision(url, source.version_table)
                    wanted = migrations.source_head(source)
                    if mine == wanted:
                        continue
                    if not auto:
                        self.plugins.fail(plugin_name, f"its tables (branch {source.branch}) "
                                                       f"are at {mine or 'nothing'}, it needs "
                                                       f"{wanted}: run `mami db upgrade`")
                        continue
                    lock()
                    mine = migrations.current_revision(url, source.version_table)
                    if mine == wanted:
                        continue
                    log.info("upgrading the tables of plugin %s %s -> %s",
                             plugin_name, mine, wanted)
                    migrations.upgrade(url, f"{source.branch}@head", [source])
                except Exception as exc:
                    self.plugins.fail(plugin_name, f"its migrations failed: {describe(exc)}")

    def register_providers(self) -> None:
        """Collect every plugin's providers. A provider that does not satisfy its
        protocol, or whose name another plugin already registered, fails its plugin
        (the message names both plugins); the first one registered keeps the name."""
        collectors = {
            "llm": self.plugins.register_llm_providers,
            "retriever": self.plugins.register_retrievers,
            "memory": self.plugins.register_memory_stores,
            "images": self.plugins.register_image_generators,
            "auth": self.plugins.register_authenticators,
        }
        for kind, collect in collectors.items():
            for plugin_name, provider in collect(self):
                self._add_provider(kind, plugin_name, provider)

    def _add_provider(self, kind: str, plugin_name: str, provider: Any) -> None:
        record = self.plugins.records.get(plugin_name)
        if record is not None and record.status == "failed":
            return
        problems = protocol_problems(kind, provider)
        if problems:
            self.plugins.fail(plugin_name, f"its {kind} provider {provider!r} does not satisfy "
                                           f"{PROVIDER_HOOKS[kind][0]}: {'; '.join(problems)}")
            return
        name = provider.name
        holder = self.providers[kind].get(name)
        if holder is not None:
            owner = self.provider_plugin.get(id(holder), "?")
            self.plugins.fail(plugin_name, f"{kind} provider name {name!r} is already "
                                           f"registered by plugin {owner}")
            return
        self.providers[kind][name] = provider
        self.provider_plugin[id(provider)] = plugin_name
        if record is not None and kind not in record.provides:
            record.provides.append(kind)

    def register_chat_commands(self) -> None:
        """Collect the slash commands of every plugin (and core's own) for this runtime;
        a name already taken fails the second plugin, naming the first."""
        owners: dict[str, str] = {}
        collected = self.plugins.register_chat_commands(self)
        core_first = sorted(collected, key=lambda pair: pair[0] in self.plugins.records)
        for plugin_name, command in core_first:
            record = self.plugins.records.get(plugin_name)
            if record is not None and record.status == "failed":
                continue
            name = getattr(command, "name", None)
            if not isinstance(name, str) or not name or " " in name or name.startswith("/"):
                self.plugins.fail(plugin_name, f"chat command {command!r}: the name must be "
                                               "a word without '/' or spaces")
            elif not callable(getattr(command, "handler", None)):
                self.plugins.fail(plugin_name, f"chat command /{name}: handler is not callable")
            elif name in self.chat_commands:
                self.plugins.fail(plugin_name, f"chat command /{name} is already registered "
                                               f"by plugin {owners[name]}")
            else:
                self.chat_commands[name] = command
                owners[name] = plugin_name
        self._command_owner = owners

    def register_tools(self) -> None:
        """Collect every plugin's tools into :attr:`tools`. An invalid tool, or a name
        already taken, fails the plugin (the message names the other plugin) and drops
        the tools it registered."""
        for plugin_name, item in self.plugins.register_tools(self):
            record = self.plugins.records.get(plugin_name)
            if record is not None and record.status == "failed":
                continue
            try:
                enabled = self.tools.add(item, plugin_name)
            except ToolRejected as exc:
                self.plugins.fail(plugin_name, str(exc))
                self.tools.remove_plugin(plugin_name)
                continue
            if enabled and record is not None and "tools" not in record.provides:
                record.provides.append("tools")
        for problem in self.tool_pattern_problems().values():
            log.warning("%s", problem)

    def tool_pattern_problems(self) -> dict[str, str]:
        """Per running plugin whose ``[plugins.<name>] tools`` list has patterns that
        match none of its tools, a message naming the file, the patterns and the tools
        there are (logged at start, listed by ``mami doctor``)."""
        problems = {}
        for name, record in self.plugins.records.items():
            unmatched = self.tools.unmatched(name) if record.status == "ok" else []
            if not unmatched:
                continue
            names = self.tools.names_of(name)
            shown = ", ".join(repr(p) for p in unmatched)
            one = len(unmatched) == 1
            listed = any(plugin == name for plugin, _ in self.tools.toolsets)
            problems[name] = (
                f"{self.config.source}: [plugins.{name}] tools: {shown} "
                f"match{'es' if one else ''} no tool of plugin {name}, so "
                f"{'it enables' if one else 'they enable'} nothing (its tools"
                f"{' now' if listed else ''}: "
                f"{', '.join(names) if names else 'none'})")
        return problems

    def _drop_failed_providers(self) -> None:
        for registered in self.providers.values():
            for name, provider in list(registered.items()):
                record = self.plugins.records.get(self.provider_plugin.get(id(provider), ""))
                if record is not None and record.status == "failed":
                    del registered[name]
        for name, plugin_name in list(self._command_owner.items()):
            record = self.plugins.records.get(plugin_name)
            if record is not None and record.status == "failed":
                del self.chat_commands[name]
        for name, record in self.plugins.records.items():
            if record.status == "failed":
                self.tools.remove_plugin(name)

    def _active(self, kind: str) -> Any | None:
        registered = self.providers[kind]
        key = PROVIDER_HOOKS[kind][1]
        wanted = getattr(self.config.core, key) if key else ""
        if wanted:
            return registered.get(wanted)
        return next(iter(registered.values()), None)

    @property
    def llm(self) -> LLMProvider | None:
        return self._active("llm")  # type: ignore[no-any-return]

    @property
    def retriever(self) -> Retriever | None:
        return self._active("retriever")  # type: ignore[no-any-return]

    @property
    def memory(self) -> MemoryStore | None:
        return self._active("memory")  # type: ignore[no-any-return]

    @property
    def images(self) -> ImageGenerator | None:
        return self._active("images")  # type: ignore[no-any-return]

    @property
    def authenticator(self) -> Authenticator | None:
        return self._active("auth")  # type: ignore[no-any-return]

    def provider_off(self, plugin: str, kind: str, reason: str) -> None:
        """Say why ``plugin`` registers no provider of ``kind`` (one of
        :data:`PROVIDER_HOOKS`) this time, typically from its ``register_*`` hook when a
        setting it needs is empty: the reason, which should name the setting, is logged
        once and is what :meth:`require` (a route's 503) and ``/health`` say."""
        record = self.plugins.records.get(plugin)
        if record is not None:
            record.off[kind] = reason
        log.info("plugin %s provides no %s: %s", plugin, kind, reason)

    def unavailable(self, kind: str) -> str:
        """Why no provider of ``kind`` is active: each plugin's own reason (a setting
        it needs, or why it failed), else that none is enabled."""
        reasons = []
        for name, record in self.plugins.records.items():
            if record.status == "failed" and kind in record.provides:
                reasons.append(f"plugin {name} failed: {record.error}")
            elif kind in record.off:
                reasons.append(f"plugin {name}: {record.off[kind]}")
        wanted = getattr(self.config.core, PROVIDER_HOOKS[kind][1], "") \
            if PROVIDER_HOOKS[kind][1] else ""
        if wanted and self.providers[kind]:
            reasons.append(f"[core] {PROVIDER_HOOKS[kind][1]} = {wanted!r} is not one of "
                           f"{', '.join(self.providers[kind])}")
        if not reasons:
            return f"no {kind} plugin is enabled and running"
        return f"no {kind} plugin is running: {'; '.join(reasons)}"

    def require(self, kind: str) -> Any:
        """The active provider of ``kind`` or a 503 saying why there is none."""
        provider = self._active(kind)
        if provider is None:
            raise PluginUnavailable(self.unavailable(kind))
        return provider

    async def claim_once(self, consumer: str, key: str) -> bool:
        """Record that ``consumer`` handles ``key``. True the first time, False on every
        later call, also across processes: a unique row makes it exactly once."""
        try:
            async with self.db.session() as session:
                session.add(EventReceipt(consumer=consumer, key=key))
                await session.commit()
            return True
        except IntegrityError:
            return False

    async def release_claim(self, consumer: str, key: str) -> None:
        """Undo :meth:`claim_once` (the work it guarded failed), so the next delivery of
        the event claims ``key`` again and retries."""
        from sqlalchemy import delete

        async with self.db.session() as session:
            await session.execute(delete(EventReceipt).where(
                EventReceipt.consumer == consumer, EventReceipt.key == key))  # type: ignore[arg-type]
            await session.commit()

    async def fire(self, hook_name: str, **kwargs: Any) -> list[tuple[str, str]]:
        """Deliver an event to every plugin, isolated; returns the errors."""
        return await self.plugins.fire(
            hook_name, self.config.core.event_timeout, runtime=self, **kwargs
        )

    async def message_completed(self, event: MessageCompleted) -> list[tuple[str, str]]:
        """Fire ``message_completed``; returns ``(plugin, error)`` per failed subscriber."""
        return await self.plugins.message_completed(event, self, self.config.core.event_timeout)

    async def image_finished(self, event: ImageFinished) -> list[tuple[str, str]]:
        """Fire ``image_finished``; returns ``(plugin, error)`` per failed subscriber."""
        return await self.plugins.image_finished(event, self, self.config.core.event_timeout)

    async def stop(self) -> None:
        await self.plugins.shutdown(self)
        closing = [provider for registered in self.providers.values()
                   for provider in registered.values()]
        for provider in [*closing, *self.tools.to_close]:
            close = getattr(provider, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:
                    log.warning("closing %s failed: %s", getattr(provider, "name", "?"), exc)
        await self.db.close()
        self.started = False

    def health(self) -> dict[str, Any]:
        """Overall status plus one entry per plugin (with any health the provider reports)."""
        problem = self.db.problem()
        return {
            "status": "degraded" if problem else self.plugins.status(),
            "database": {"status": "unavailable", "error": problem} if problem
            else {"status": "ok"},
            "plugins": {name: rec.as_dict() for name, rec in self.plugins.records.items()},
        }
