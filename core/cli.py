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
from core.errors import MamiError

Command = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP and WebSocket server with uvicorn."""
    import gc

    import uvicorn

    from core.app import create_app, runtime_of

    config = _config(args)
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    app = create_app(config)
    runtime = runtime_of(app)
    urls = [f"http://{_url_host(host)}:{port}"]
    if host in WILDCARD_BINDS:
        addresses = reachable_addresses()
        urls = [f"http://{_url_host(a)}:{port}" for a in addresses]
        runtime.state["server_addresses"] = addresses
    runtime.state["public_url"] = config.server.public_url or urls[0]
    listening = f", listening on {host or '0.0.0.0'}" if host in WILDCARD_BINDS else ""
    print(f"mami: serving on {', '.join(urls)} (config: {config.source}{listening})",
          flush=True)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=config.core.log_level.lower(),
                       ws_max_size=1 << 20, lifespan="on")
    )
    # Keep everything imported and built so far out of the garbage collector's scans:
    # full collections over it otherwise stall replies by tens of milliseconds.
    gc.freeze()
    server.run()
    return 0 if server.started else 1


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
    """Schema migrations: upgrade, downgrade, current, check. Core's chain and the chain
    of every enabled plugin that has its own tables (``<branch>@<revision>`` names one
    plugin's revision, e.g. ``mami db downgrade notes@base``)."""
    from core import migrations

    url = _config(args).database_url
    sources = [source for _, source in plugin_host(args.config).register_migrations()]
    if args.db_command == "upgrade":
        migrations.upgrade(url, args.revision, sources)
        _print_states(migrations.states(url, sources), "database at")
    elif args.db_command == "downgrade":
        migrations.downgrade(url, args.revision, sources)
        _print_states(migrations.states(url, sources), "database at")
    elif args.db_command == "current":
        _print_states(migrations.states(url, sources), "")
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
    rows = [record.as_dict() for record in host.records.values()]
    if args.json:
        print(json.dumps({"status": host.status(), "plugins": rows,
                          "config": config.redacted()["plugins"]}, indent=2, default=str))
        return 0
    for row in rows:
        line = f"{row['name']:<16} {row['status']:<9} {row['source']:<10} {row['module']}"
        print(line + (f"  ({row['error']})" if row["error"] else ""))
    return 0


async def _checked_runtime(config: Config) -> Any:
    """A runtime that went through registration and startup, then stopped. A schema
    that is behind skips the startup hooks (with a warning), not the registration."""
    from core.runtime import Runtime, SchemaBehind

    runtime = Runtime(config)
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
                           description=cmd_serve.__doc__)
    serve.add_argument("--host", help="interface to listen on (default: [server] host)")
    serve.add_argument("--port", type=int, help="port (default: [server] port)")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="manage the database schema (Alembic migrations)",
                        description=cmd_db.__doc__)
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="upgrade to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = db_sub.add_parser("downgrade", help="downgrade to a revision (e.g. -1 or base)")
    down.add_argument("revision")
    db_sub.add_parser("current", help="show the database's revision")
    db_sub.add_parser("check", help="fail if the schema is behind or drifts from the models")
    db.set_defaults(func=cmd_db)

    plugins = sub.add_parser("plugins", help="list plugins and their state",
                             description=cmd_plugins.__doc__)
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


def _plugin_commands(config_path: str | None) -> Callable[[Any], None]:
    """Sub-commands from core and the enabled plugins, all through the
    ``register_commands`` hook; a broken config leaves core's commands only (the
    command then reports the config error)."""
    from core.config import config_from_dict
    from core.plugins import PluginHost

    try:
        host = plugin_host(config_path)
    except MamiError:
        host = PluginHost(config_from_dict({}), candidates=[])

    def add(sub: Any) -> None:
        host.register_commands(sub)

    return add


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--debug", action="store_true")
    known, _ = pre.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if known.debug else os.environ.get("MAMI_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    parser = build_parser(_plugin_commands(known.config))
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
        print(f"mami: error: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run the importable core.cli, not this __main__ copy.
    from core.cli import main as _main

    raise SystemExit(_main())
