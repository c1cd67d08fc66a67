"""The ``mami`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from core.config import Config, load_config
from core.errors import MamiError, hide_url_secrets, hide_url_secrets_in_logs

Command = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP and WebSocket server with uvicorn. The address is bound first, so a
    port in use is refused in one line before anything starts; SIGTERM or SIGINT while
    the plugins start stops the process."""
    import gc

    from core.app import create_app, runtime_of

    config = _config(args)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    listener = bind_listener(host, port)
    try:
        app = create_app(config)
        runtime = runtime_of(app)
        _schema_preflight(runtime)
        urls = [f"http://{_url_host(host)}:{port}"]
        if host in WILDCARD_BINDS:
            addresses = reachable_addresses()
            urls = [f"http://{_url_host(a)}:{port}" for a in addresses]
            runtime.state["server_addresses"] = addresses
        runtime.state["public_url"] = config.server.public_url or urls[0]
        listening = f", listening on {host or '0.0.0.0'}" if host in WILDCARD_BINDS else ""
        print(f"mami: serving on {', '.join(urls)} (config: {config.source}{listening})",
              flush=True)
        import uvicorn

        server = _serve_class()(
            uvicorn.Config(app, host=host, port=port, log_level=config.core.log_level.lower(),
                           ws_max_size=1 << 20, lifespan="on"),
            runtime,
        )
        # Keep everything imported and built so far out of the garbage collector's scans:
        # full collections over it otherwise stall replies by tens of milliseconds.
        gc.freeze()
        try:
            server.run(sockets=[listener])
        except asyncio.CancelledError:
            if server.stopped_by is None:
                raise
        if server.stopped_by is not None:
            return 128 + server.stopped_by
        return 0 if server.started else 1
    finally:
        listener.close()


def bind_listener(host: str, port: int) -> Any:
    """A TCP socket bound to ``host:port`` (uvicorn listens on it), or a one-line
    :class:`MamiError` naming the address and the way out when it cannot be bound."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        where = f"{_url_host(host or '0.0.0.0')}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise MamiError(f"cannot listen on {where}: the address is already in use (another "
                            "mami serve or program is there): stop it, or choose another "
                            "port with --port (or [server] port in plugins.toml)") from None
        raise MamiError(f"cannot listen on {where}: {exc.strerror or exc}: choose another "
                        "address or port (--host, --port, or [server] in plugins.toml)"
                        ) from None
    listener.set_inheritable(True)
    return listener


STOP_GRACE = 5.0
"""Seconds a start-up interrupted by SIGTERM/SIGINT has to unwind before the process
ends anyway (a plugin's startup may ignore cancellation)."""


def _serve_class() -> Any:
    """uvicorn's ``Server``, told apart during start-up: uvicorn only notes a signal and
    waits for the application's start-up to end, so a plugin whose ``startup`` never
    returns kept ``mami serve`` alive through SIGTERM. Here a signal during start-up
    prints one line, cancels the start-up, and ends the process within
    :data:`STOP_GRACE` seconds (a second signal: at once)."""
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        def __init__(self, config: Any, runtime: Any) -> None:
            super().__init__(config)
            self.runtime = runtime
            self.stopped_by: int | None = None
            self._main: asyncio.Task[Any] | None = None
            self._loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: Any = None) -> None:
            self._main = asyncio.current_task()
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.started or self._main is None or self._loop is None:
                super().handle_exit(sig, frame)
                return
            code = 128 + sig
            if self.stopped_by is not None:  # a second signal: no more waiting
                os._exit(code)
            self.stopped_by = sig
            running = self.runtime.plugins.running
            waiting = (f" (plugin {running[0]}'s {running[1]} was still running)"
                       if running else "")
            print(f"mami: {signal.Signals(sig).name} during start-up{waiting}: stopping "
                  "without serving", file=sys.stderr, flush=True)
            # The cancelled start-up is not an error to show as uvicorn's traceback.
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
            watchdog = threading.Timer(STOP_GRACE, os._exit, (code,))
            watchdog.daemon = True
            watchdog.start()
            self._loop.call_soon_threadsafe(self._main.cancel)

    return Server


def _schema_preflight(runtime: Any) -> None:
    """Refuse to serve a core schema that is ahead, or behind without auto-migration,
    in one line (not uvicorn's traceback of the failed startup)."""
    from core import migrations

    url = runtime.db.url
    current = migrations.current_revision(url)
    head = migrations.head_revision()
    auto = runtime.db.is_sqlite and runtime.config.core.auto_migrate
    if migrations.is_ahead(current) or (current != head and not auto):
        raise MamiError(str(migrations.schema_problem(current, head)))


WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def reachable_addresses() -> list[str]:
    """This machine's addresses that other machines may reach, the primary one first,
    then loopback: what to print instead of a wildcard bind. No packet is sent (a UDP
    socket's ``connect`` only picks the route)."""
    import socket

    found: list[str] = []
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.connect((probe, 9))
            found.append(udp.getsockname()[0])
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(str(info[4][0]))
    usable = [a for a in dict.fromkeys(found)
              if not a.startswith(("127.", "fe80:")) and a not in ("::1", "0.0.0.0")]
    return [*usable, "127.0.0.1"]


def cmd_db(args: argparse.Namespace) -> int:
    """Schema migrations: upgrade, downgrade, current, check; ``repair`` heals the data a
    killed process left (answers left streaming, unfinished documents, orphan vectors).
    Core's chain and the chain
    of every enabled plugin that has its own tables (``<branch>@<revision>`` names one
    plugin's revision, e.g. ``mami db downgrade notes@base``). A downgrade may drop
    tables and columns with their data: it asks first (``--yes`` answers for it).
    Schema changes of one database take turns (SQLite: a lock on
    ``<database>.migrate.lock``; PostgreSQL: an advisory lock): a second process waits,
    saying so, then finds the work done."""
    from core import migrations

    url = _config(args).database_url
    sources = [source for _, source in plugin_host(args.config).register_migrations()]
    if args.db_command in ("upgrade", "downgrade", "check"):
        ahead = [s.problem for s in migrations.states(url, sources) if s.ahead]
        if ahead:
            raise MamiError("; ".join(str(line) for line in ahead))
    if args.db_command == "upgrade":
        migrations.upgrade(url, args.revision, sources)
        _print_states(migrations.states(url, sources), "database at")
    elif args.db_command == "downgrade":
        _confirm_downgrade(args, url, sources)
        migrations.downgrade(url, args.revision, sources)
        _print_states(migrations.states(url, sources), "database at")
    elif args.db_command == "current":
        _print_states(migrations.states(url, sources), "")
    elif args.db_command == "repair":
        return asyncio.run(_repair(_config(args)))
    elif args.db_command == "check":
        behind = [s for s in migrations.states(url, sources) if s.behind]
        if behind:
            raise MamiError("; ".join(
                f"{'database' if s.name == 'core' else 'branch ' + s.name} is at "
                f"{s.current or 'nothing'}, head is {s.head}" for s in behind)
                + ": run `mami db upgrade`")
        diffs = migrations.drift(url, sources)
        if diffs:
            for diff in diffs:
                print(f"drift: {diff}")
            raise MamiError(f"{len(diffs)} difference(s) between the models and the migrations")
        names = ", ".join(["core", *(s.branch for s in sources)])
        print(f"{migrations.head_revision()}: no drift between the models and the migrations "
              f"({names})")
    return 0


def _confirm_downgrade(args: argparse.Namespace, url: str, sources: list[Any]) -> None:
    """Ask before a downgrade (it may drop tables and columns, and their rows); without
    a terminal, only ``--yes`` lets it run."""
    from core import migrations

    if args.yes:
        return
    chains = {s.name: s for s in migrations.states(url, sources)}
    branch, at, rev = args.revision.partition("@")
    name = branch if at and branch else "core"
    state = chains.get(name)
    where = state.current if state is not None else None
    what = f"{'core' if name == 'core' else 'branch ' + name} from {where or 'nothing'} to " \
           f"{rev if at else args.revision}"
    if name == "core" and (rev if at else args.revision) == "base" and sources:
        what += " (every enabled plugin's chain to base first)"
    warning = (f"mami db downgrade {args.revision} takes {what}: the revisions it undoes may "
               "drop tables and columns, and every row in them")
    if not sys.stdin.isatty():
        raise MamiError(f"{warning}. Back up the database, then run it again with --yes "
                        "to confirm")
    answer = input(f"{warning}.\nType yes to go on: ")
    if answer.strip().lower() != "yes":
        raise MamiError("downgrade cancelled; nothing was changed")


async def _repair(config: Config) -> int:
    """Heal what killed processes left: answers left streaming (finished as
    interrupted, their text kept) and each provider's own ``repair()`` (chroma-rag:
    unfinished documents and orphan vectors). Prints one line per check."""
    from core.runtime import Runtime

    runtime = Runtime(config)
    try:
        await runtime.ensure_started()  # which finishes abandoned answers
        answers = runtime.state.get("chat.abandoned_finished", 0)
        print(f"ok    chat: {answers} answer(s) left streaming by a stopped process "
              "finished as interrupted")
        failed = 0
        seen: set[int] = set()
        for registered in runtime.providers.values():
            for provider in registered.values():
                repair = getattr(provider, "repair", None)
                if repair is None or id(provider) in seen:
                    continue
                seen.add(id(provider))
                for check in await repair(apply=True):
                    failed += check.status == "fail"
                    print(f"{check.status:<5} {check.name}: {check.detail}"
                          + (f"\n      fix: {check.fix}" if check.fix and check.status != "ok"
                             else ""))
    finally:
        await runtime.stop()
    return 1 if failed else 0


def _print_states(states: list[Any], prefix: str) -> None:
    for state in states:
        where = state.current or ("base (empty)" if prefix else "empty")
        mark = "up to date" if not state.behind else f"behind (head is {state.head})"
        label = "" if state.name == "core" else f"{state.name}: "
        print(f"{prefix + ' ' if prefix else ''}{label}{where} ({mark})")


def cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins with their state and any error. The plugins are registered and
    started as ``mami serve`` would (then stopped), so a plugin that fails there is
    reported failed here."""
    config = _config(args)
    with contextlib.redirect_stdout(sys.stderr):  # what plugins print on startup: not the list
        runtime = asyncio.run(_checked_runtime(config))
    host = runtime.plugins
    tools = runtime.tools.by_plugin()
    rows = [{**record.as_dict(), "tools": tools.get(record.name, [])}
            for record in host.records.values()]
    if args.json:
        print(json.dumps({"status": host.status(), "plugins": rows,
                          "config": config.redacted()["plugins"]}, indent=2, default=str))
        return 0
    for row in rows:
        line = f"{row['name']:<16} {row['status']:<9} {row['source']:<10} {row['module']}"
        line += f"  ({row['error']})" if row["error"] else ""
        print(line + (f"\n{'':<16} tools: {', '.join(row['tools'])}" if row["tools"] else ""))
    return 0


async def _checked_runtime(config: Config) -> Any:
    """A runtime that went through registration and startup, then stopped. A schema
    that is behind skips the startup hooks (with a warning), not the registration."""
    from core.runtime import Runtime, SchemaBehind

    runtime = Runtime(config)
    runtime.repair_on_start = False  # a listing: no repairs, no first admin token
    try:
        await runtime.ensure_started()
    except SchemaBehind as exc:
        print(f"mami: warning: {exc}; plugins were registered but not started",
              file=sys.stderr)
        runtime.register_providers()
        runtime.register_chat_commands()
    finally:
        await runtime.stop()
    return runtime


def _help(command: Callable[..., Any]) -> str:
    """A command's docstring as ``--help`` shows it: without reST's double backticks."""
    return (command.__doc__ or "").replace("``", "`")


def build_parser(plugin_commands: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mami", description="mami: a plugin-based chatbot framework."
    )
    parser.add_argument(
        "--config", help="path to plugins.toml (default: $MAMI_CONFIG or ./plugins.toml)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP/WebSocket server",
                           description=_help(cmd_serve))
    serve.add_argument("--host", help="interface to listen on (default: [server] host)")
    serve.add_argument("--port", type=int, help="port (default: [server] port)")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="manage the database schema (Alembic migrations)",
                        description=_help(cmd_db))
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser(
        "upgrade", help="upgrade to a revision (default: head)",
        description="Upgrade core's chain and every enabled plugin's to head (or one chain "
                    "to REVISION). One process at a time per database: another one already "
                    "migrating it (`mami db upgrade`, or a server starting on SQLite) is "
                    "waited for, with a log line saying so, on PostgreSQL through an "
                    "advisory lock and on SQLite through a lock on <database>.migrate.lock "
                    "beside the file.")
    up.add_argument("revision", nargs="?", default="head")
    down = db_sub.add_parser("downgrade", help="downgrade to a revision (e.g. -1 or base); "
                             "asks first, as it may drop data")
    down.add_argument("revision")
    down.add_argument("--yes", action="store_true",
                      help="do not ask: the downgrade may drop tables, columns and their rows")
    db_sub.add_parser("current", help="show the database's revision")
    db_sub.add_parser("check", help="fail if the schema is behind or drifts from the models")
    db_sub.add_parser("repair", help="heal what a killed process left: answers left "
                      "streaming, unfinished documents, orphan vectors")
    db.set_defaults(func=cmd_db)

    plugins = sub.add_parser("plugins", help="list plugins and their state",
                             description=_help(cmd_plugins))
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins)

    if plugin_commands is not None:
        plugin_commands(sub)
    return parser


@functools.cache
def plugin_host(config_path: str | None) -> Any:
    """The CLI's one :class:`PluginHost` (plugins are imported once per command)."""
    from core.plugins import PluginHost

    return PluginHost(load_config(config_path))


def _plugin_commands(config_path: str | None) -> tuple[Callable[[Any], None], MamiError | None]:
    """Sub-commands from core and the enabled plugins, all through the
    ``register_commands`` hook, and the configuration's error: a broken config leaves
    core's commands only (the command then reports the config error)."""
    from core.config import config_from_dict
    from core.plugins import PluginHost
    from core.runtime import reuse_plugin_host

    error = None
    try:
        host = plugin_host(config_path)
        reuse_plugin_host(host)  # the command's runtime: no second load, no second log
    except MamiError as exc:
        error = exc
        host = PluginHost(config_from_dict({}), candidates=[])

    def add(sub: Any) -> None:
        host.register_commands(sub)
        COMMANDS.update(sub.choices)

    return add, error


COMMANDS: dict[str, Any] = {}
"""The sub-commands the last :func:`build_parser` knows, by name."""


def _unknown_command(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` when no parser knows it (a plugin's command while
    the configuration that enables the plugin is broken), else ``None``."""
    words = list(argv)
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option == "--config" and words:
            words.pop(0)
    return words[0] if words and words[0] not in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--debug", action="store_true")
    known, _ = pre.parse_known_args(argv)
    hide_url_secrets_in_logs()
    logging.basicConfig(
        level=logging.DEBUG if known.debug else os.environ.get("MAMI_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    commands, config_error = _plugin_commands(known.config)
    parser = build_parser(commands)
    if config_error is not None and _unknown_command(argv) is not None:
        # `mami token ...` with a broken plugins.toml: the config is what to fix
        print(f"mami: error: {config_error.message}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except MamiError as exc:
        if args.debug:
            raise
        print(f"mami: error: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            raise
        shown = hide_url_secrets(f"{type(exc).__name__}: {exc}")
        print(f"mami: error: {shown} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run the importable core.cli, not this __main__ copy.
    from core.cli import main as _main

    raise SystemExit(_main())
