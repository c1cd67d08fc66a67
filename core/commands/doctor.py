"""``mami doctor``: check a deployment, one line per check, each with its fix.

Core checks the configuration, the data directory, the database and its schema, every
plugin's state, and that the active LLM generates a token. Providers (and toolsets) add
their own checks through the optional ``async doctor()`` method (see
:mod:`core.protocols`): the embedding model's files, Chroma, Forge, the signing key and
the allowed origins.
Nothing is changed: a schema that is behind is reported, not upgraded.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import stat
import time
from collections.abc import Iterable
from typing import Any

from core import hookimpl
from core.protocols import Check

SYMBOLS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the configuration, data directory, database, plugins and models; exit 1 on any
    failed check."""
    checks: list[Check] = []
    if not args.debug:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("mami").setLevel(logging.WARNING)
    try:
        asyncio.run(_collect(args, checks))
    except Exception as exc:  # a check that cannot even run is itself a failure
        checks.append(Check("doctor", "fail", f"{type(exc).__name__}: {exc}"))
    for check in checks:
        line = f"{SYMBOLS.get(check.status, check.status)}  {check.name}: {check.detail}"
        print(line + (f"\n      fix: {check.fix}" if check.fix and check.status != "ok" else ""))
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    print(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0


async def _collect(args: argparse.Namespace, checks: list[Check]) -> None:
    from core.config import load_config
    from core.runtime import Runtime

    try:
        config = load_config(args.config)
    except Exception as exc:
        checks.append(Check("config", "fail", str(exc), "correct the file and key named"))
        return
    checks.append(Check("config", "ok", str(config.source)))
    checks.append(_data_dir(config.data_dir))
    # Short-lived like a Lambda invocation: no background work, no first-start admin token.
    runtime = Runtime(config, serverless=True)
    runtime.repair_on_start = False
    schema = await asyncio.to_thread(_schema, runtime)
    checks.append(schema)
    if schema.status != "ok":  # starting would upgrade the schema: doctor changes nothing
        checks.append(Check("plugins", "warn", "not started: the database schema is not "
                            "current", "run `mami db upgrade` (or start `mami serve` once)"))
        return
    try:
        await runtime.ensure_started()
        checks.extend(_plugins(runtime))
        checks.extend(_tool_patterns(runtime))
        checks.append(await _abandoned_answers(runtime))
        pairs = [(runtime.provider_plugin.get(id(p), "?"), p) for p in _providers(runtime)]
        for plugin, provider in [*pairs, *runtime.tools.toolsets]:
            for check in await _provider_checks(provider, plugin):
                if check not in checks:  # two providers may share a dependency
                    checks.append(check)
        checks.append(await _generation(runtime, args.timeout))
    finally:
        await runtime.stop()


def _data_dir(path: Any) -> Check:
    if not path.exists():
        return Check("data directory", "warn", f"{path} does not exist yet",
                     "it is created on first start")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o002:
        return Check("data directory", "fail", f"{path} is writable by everyone ({mode:o})",
                     f"chmod 700 {path}")
    if mode & 0o077:
        return Check("data directory", "warn", f"{path} is open to other users ({mode:o})",
                     f"chmod 700 {path}")
    return Check("data directory", "ok", f"{path} ({mode:o})")


def _schema(runtime: Any) -> Check:
    """Core's schema and every plugin's migration chain: reachable and at head."""
    from core import migrations

    url = runtime.db.url
    try:
        sources = [source for _plugin, source in runtime.plugins.register_migrations()]
        chains = migrations.states(url, sources)
    except Exception as exc:
        return Check("database", "fail", f"cannot connect: {type(exc).__name__}: {exc}",
                     "check [core] database_url / MAMI_DATABASE_URL and that the server runs")
    behind = [c for c in chains if c.behind]
    if not behind:
        return Check("database", "ok", "reachable, schema at " + ", ".join(
            f"{c.head}" if c.name == "core" else f"{c.name}@{c.head}" for c in chains))
    state = "; ".join(f"{c.name} at {c.current or 'nothing'}, needs {c.head}" for c in behind)
    if runtime.db.is_sqlite and runtime.config.core.auto_migrate:
        return Check("database", "warn", state, "`mami serve` upgrades SQLite on start, "
                     "or run `mami db upgrade`")
    return Check("database", "fail", state, "run `mami db upgrade`")


async def _abandoned_answers(runtime: Any) -> Check:
    from sqlmodel import select

    from core.chat import abandoned
    from core.models import Message

    async with runtime.db.session() as session:
        streaming = (await session.exec(
            select(Message).where(Message.status == "streaming"))).all()
    left = sum(abandoned(message) for message in streaming)
    if left:
        return Check("chat answers", "warn", f"{left} answer(s) left streaming by a stopped "
                     "process", "start `mami serve` or run `mami db repair` (they are "
                     "finished as interrupted, their text kept)")
    return Check("chat answers", "ok", f"none left streaming by a stopped process "
                 f"({len(streaming)} streaming now)")


def _plugins(runtime: Any) -> Iterable[Check]:
    for record in runtime.plugins.records.values():
        if record.status == "failed":
            yield Check(f"plugin {record.name}", "fail", record.error or "failed",
                        f"fix the cause or set [plugins.{record.name}] enabled = false")
        elif record.status == "ok":
            yield Check(f"plugin {record.name}", "ok", ", ".join(record.provides) or "loaded")


def _tool_patterns(runtime: Any) -> Iterable[Check]:
    """A ``tools = [...]`` pattern that matches no tool of its plugin (a typo that
    silently leaves a tool out)."""
    for plugin, problem in runtime.tool_pattern_problems().items():
        yield Check(f"tools of {plugin}", "warn", problem,
                    f"correct the pattern in [plugins.{plugin}] tools (names are "
                    "case-sensitive; * and ? are wildcards) or remove it")


def _providers(runtime: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    for registered in runtime.providers.values():
        for provider in registered.values():
            seen.setdefault(id(provider), provider)
    return list(seen.values())


async def _provider_checks(provider: Any, plugin: str) -> list[Check]:
    """The provider's own ``doctor()`` checks, else one line from its ``health()``."""
    name = getattr(provider, "name", type(provider).__name__)
    doctor, health = getattr(provider, "doctor", None), getattr(provider, "health", None)
    try:
        if doctor is not None:
            return list(await doctor())
        if health is None:
            return []
        report = dict(await asyncio.wait_for(health(), 10.0))
    except Exception as exc:
        return [Check(name, "fail", f"its checks failed: {type(exc).__name__}: {exc}")]
    status = str(report.get("status", "ok"))
    if status in ("ok", "idle"):
        return [Check(name, "ok", status)]
    reason = report.get("reason") or report.get("error") or status
    return [Check(name, "fail", f"{status}: {reason}", "start the service it talks to, "
                  f"fix its settings, or set [plugins.{plugin}] enabled = false")]


async def _generation(runtime: Any, timeout: float) -> Check:
    from core.chat import ready
    from core.protocols import ChatMessage, GenerationParams

    llm = runtime.llm
    if llm is None:
        return Check("llm", "fail", "no LLM provider is running", "see the plugin lines above")
    started = time.monotonic()

    async def one_token() -> str:
        await ready(llm)
        text = ""
        async for delta in llm.stream([ChatMessage("user", "Say OK.")],
                                      GenerationParams(max_tokens=1, temperature=0.0)):
            text += delta.text
        return text

    try:
        text = await asyncio.wait_for(one_token(), timeout)
    except Exception as exc:
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return Check(f"llm {llm.name}", "fail", f"could not generate: {message}",
                     "see the message; `mami plugins` shows the model's settings")
    took = (time.monotonic() - started) * 1000
    return Check(f"llm {llm.name}", "ok", f"generated {text!r} in {took:.0f} ms")


@hookimpl
def register_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("doctor", help="check this deployment and say how to fix it",
                            description=cmd_doctor.__doc__)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds the LLM may take to generate one token (default 120)")
    parser.set_defaults(func=cmd_doctor)
