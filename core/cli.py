"""The ``mami`` command line."""

from __future__ import annotations

import argparse
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
    runtime.state["public_url"] = config.server.public_url or f"http://{host}:{port}"
    print(f"mami: serving on http://{host}:{port} (config: {config.source})", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=config.core.log_level.lower(),
                       ws_max_size=1 << 20, lifespan="on")
    )
    # Keep everything imported and built so far out of the garbage collector's scans:
    # full collections over it otherwise stall replies by tens of milliseconds.
    gc.freeze()
    server.run()
    return 0 if server.started else 1


def cmd_db(args: argparse.Namespace) -> int:
    """Schema migrations: upgrade, downgrade, current, check."""
    from core import migrations

    url = _config(args).database_url
    if args.db_command == "upgrade":
        migrations.upgrade(url, args.revision)
        print(f"database at {migrations.current_revision(url)}")
    elif args.db_command == "downgrade":
        migrations.downgrade(url, args.revision)
        print(f"database at {migrations.current_revision(url) or 'base (empty)'}")
    elif args.db_command == "current":
        current = migrations.current_revision(url)
        head = migrations.head_revision()
        state = "up to date" if current == head else f"behind (head is {head})"
        print(f"{current or 'empty'} ({state})")
    elif args.db_command == "check":
        current, head = migrations.current_revision(url), migrations.head_revision()
        if current != head:
            raise MamiError(f"database is at {current or 'nothing'}, head is {head}: "
                            "run `mami db upgrade`")
        diffs = migrations.drift(url)
        if diffs:
            for diff in diffs:
                print(f"drift: {diff}")
            raise MamiError(f"{len(diffs)} difference(s) between the models and the migrations")
        print(f"{head}: no drift between the models and the migrations")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins with their state and any error."""
    config = _config(args)
    host = plugin_host(args.config)
    rows = [record.as_dict() for record in host.records.values()]
    if args.json:
        print(json.dumps({"status": host.status(), "plugins": rows,
                          "config": config.redacted()["plugins"]}, indent=2, default=str))
        return 0
    for row in rows:
        line = f"{row['name']:<16} {row['status']:<9} {row['source']:<10} {row['module']}"
        print(line + (f"  ({row['error']})" if row["error"] else ""))
    return 0


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

    for register in CORE_COMMANDS:
        register(sub)
    if plugin_commands is not None:
        plugin_commands(sub)
    return parser


CORE_COMMANDS: list[Callable[[Any], None]] = []
"""Functions that add core sub-commands (chat, ingest, worker, ...) to the parser."""


def core_command(register: Callable[[Any], None]) -> Callable[[Any], None]:
    """Decorator: add a function that registers a core sub-command."""
    CORE_COMMANDS.append(register)
    return register


@functools.cache
def plugin_host(config_path: str | None) -> Any:
    """The CLI's one :class:`PluginHost` (plugins are imported once per command)."""
    from core.plugins import PluginHost

    return PluginHost(load_config(config_path))


def _plugin_commands(config_path: str | None) -> Callable[[Any], None] | None:
    """Sub-commands from enabled plugins; a broken config only hides them."""
    try:
        host = plugin_host(config_path)
    except MamiError:
        return None

    def add(sub: Any) -> None:
        host.call_each("register_commands", subparsers=sub)

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
    _load_core_commands()
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


def _load_core_commands() -> None:
    import importlib

    for module in ("core.commands",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


if __name__ == "__main__":
    # Run the importable core.cli, not this __main__ copy: core commands register with it.
    from core.cli import main as _main

    raise SystemExit(_main())
