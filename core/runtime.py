"""The runtime: configuration, plugins, database and the active providers of one app.

It is created without I/O (so Lambda can build it at import time) and started lazily
by :meth:`Runtime.ensure_started`, which opens the database, registers providers and
runs the plugins' ``startup`` hooks exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import IntegrityError

from core import migrations
from core.config import Config
from core.db import Database
from core.errors import ConfigError, PluginUnavailable
from core.models import EventReceipt
from core.plugins import Candidate, PluginHost
from core.protocols import Authenticator, ImageGenerator, LLMProvider, MemoryStore, Retriever

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


class Runtime:
    """Everything a request handler or plugin needs, for one app instance."""

    def __init__(
        self, config: Config, candidates: list[Candidate] | None = None, *, serverless: bool = False
    ) -> None:
        self.config = config
        self.serverless = serverless
        self.plugins = PluginHost(config, candidates)
        self.db = Database(config.database_url)
        self.providers: dict[str, dict[str, Any]] = {kind: {} for kind in PROVIDER_HOOKS}
        self.provider_plugin: dict[int, str] = {}
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
            await self.plugins.start(runtime=self)
            self._drop_failed_providers()
            self.started = True

    def prepare_schema(self) -> None:
        """Upgrade a SQLite database to head when allowed; otherwise refuse a schema
        that is behind, naming the command that fixes it."""
        current = migrations.current_revision(self.db.url)
        head = migrations.head_revision()
        if current == head:
            return
        if self.db.is_sqlite and self.config.core.auto_migrate:
            log.info("upgrading database schema %s -> %s", current, head)
            migrations.upgrade(self.db.url)
            return
        raise SchemaBehind(
            f"database schema is at {current or 'nothing'} but mami needs {head}: "
            "run `mami db upgrade`"
        )

    def register_providers(self) -> None:
        for kind, (hook, _key) in PROVIDER_HOOKS.items():
            for plugin_name, provider in self.plugins.collect(hook, runtime=self):
                name = getattr(provider, "name", plugin_name)
                self.providers[kind].setdefault(name, provider)
                self.provider_plugin[id(provider)] = plugin_name
                record = self.plugins.records.get(plugin_name)
                if record is not None and kind not in record.provides:
                    record.provides.append(kind)

    def _drop_failed_providers(self) -> None:
        for registered in self.providers.values():
            for name, provider in list(registered.items()):
                record = self.plugins.records.get(self.provider_plugin.get(id(provider), ""))
                if record is not None and record.status == "failed":
                    del registered[name]

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

    def require(self, kind: str) -> Any:
        """The active provider of ``kind`` or a 503 saying which feature is off."""
        provider = self._active(kind)
        if provider is None:
            raise PluginUnavailable(f"no {kind} plugin is enabled and running")
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

    async def fire(self, hook_name: str, **kwargs: Any) -> list[tuple[str, str]]:
        """Deliver an event to every plugin, isolated; returns the errors."""
        return await self.plugins.fire(
            hook_name, self.config.core.event_timeout, runtime=self, **kwargs
        )

    async def stop(self) -> None:
        for plugin_name, result in self.plugins.call_each("shutdown", runtime=self):
            try:
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result
            except Exception as exc:
                log.error("shutdown of plugin %s failed: %s", plugin_name, exc)
        for registered in self.providers.values():
            for provider in registered.values():
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
        return {
            "status": self.plugins.status(),
            "plugins": {name: rec.as_dict() for name, rec in self.plugins.records.items()},
        }
