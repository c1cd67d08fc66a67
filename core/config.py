"""Loading and checking ``plugins.toml``.

The file has a ``[core]`` table, a ``[server]`` table, a ``[budget]`` table and one
``[plugins.<name>]`` table per plugin. A value may be ``{ env = "NAME" }`` to read a
secret from the environment; such values, and keys that look like secrets, are
redacted wherever configuration is shown.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core.errors import ConfigError, hide_url_secrets

T = TypeVar("T")

SECRET_KEY = re.compile(
    r"(secret|token|password|passwd|api_?key|signing_?key|authorization|cookie)", re.I)
REDACTED = "***"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""``[core] log_level`` values (uvicorn's; any case)."""
PLUGIN_KEYS = ("enabled", "tools")
"""Keys of every ``[plugins.<name>]`` table that belong to mami, not to the plugin's
``Settings``: ``enabled`` (true/false) and ``tools`` (true, false or a list of names)."""


@dataclass
class CoreSettings:
    """``[core]``: which providers are active, storage and the assistant's persona."""

    llm: str = ""
    retriever: str = ""
    memory: str = ""
    images: str = ""
    system_prompt: str = "You are mami, a helpful and concise assistant."
    data_dir: str = "./data"
    database_url: str = ""
    auto_migrate: bool = True
    auth: bool = True
    local_owner: str = "local"
    image_worker: bool = True
    image_dir: str = ""  # where finished images go; empty: <data_dir>/images
    image_store: str = ""  # empty: image_dir; s3://bucket/prefix: an S3 bucket
    s3_endpoint_url: str = ""  # another S3-compatible API than AWS's
    image_url_ttl: float = 300.0  # seconds a presigned image URL stays valid
    event_timeout: float = 30.0
    startup_timeout: float = 60.0  # seconds one plugin's startup may take; then it is failed
    image_deadline: float = 600.0
    log_level: str = "INFO"
    max_tool_steps: int = 8  # model calls that may run tools in one turn; then it must answer
    tool_deadline: float = 120.0  # seconds for a turn's tool steps; then it must answer
    tool_timeout: float = 30.0  # seconds one tool call may take (a tool may set its own)
    tool_owners: dict[str, list[str]] = field(default_factory=dict)  # owner -> tool patterns
    document_max_bytes: int = 10_000_000  # a document file's size (uploads and mami ingest)
    document_max_pages: int = 500  # a PDF's pages

    def __post_init__(self) -> None:
        for name in ("event_timeout", "startup_timeout", "image_deadline", "tool_timeout",
                     "tool_deadline", "document_max_bytes", "document_max_pages"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[core] {name}: must be greater than 0")
        if self.max_tool_steps < 0:
            raise ConfigError("[core] max_tool_steps: must be 0 or more")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"[core] log_level: {self.log_level!r} is not one of "
                              f"{', '.join(LOG_LEVELS)}")
        for owner, names in self.tool_owners.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"[core] tool_owners.{owner}: expected a list of tool names")


@dataclass
class ServerSettings:
    """``[server]``: where ``mami serve`` listens."""

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"[server] port: {self.port} is not a port (1-65535)")


@dataclass
class BudgetSettings:
    """``[budget]``: how the context window is shared (tokens)."""

    reply_tokens: int = 512
    memory_tokens: int = 256
    rag_tokens: int = 768
    summary_tokens: int = 256
    summarize: bool = False
    rag_k: int = 4
    memory_k: int = 5
    tool_result_tokens: int = 1024


@dataclass
class Config:
    """The whole configuration. ``plugins`` holds each plugin table, secrets resolved."""

    path: Path | None
    core: CoreSettings = field(default_factory=CoreSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    secret_paths: set[str] = field(default_factory=set)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "<defaults>"

    @property
    def data_dir(self) -> Path:
        return Path(os.environ.get("MAMI_DATA_DIR") or self.core.data_dir).expanduser()

    @property
    def database_url(self) -> str:
        url = os.environ.get("MAMI_DATABASE_URL") or self.core.database_url
        return url or f"sqlite:///{(self.data_dir / 'mami.db').resolve()}"

    def plugin_enabled(self, name: str, default: bool = True) -> bool:
        value = self.plugins.get(name, {}).get("enabled", default)
        return bool(value)

    def plugin_tools(self, name: str) -> bool | list[str]:
        """``[plugins.<name>] tools``: ``True`` (default, all of the plugin's tools),
        ``False`` (none) or the names (``fnmatch`` patterns) of those to enable."""
        value = self.plugins.get(name, {}).get("tools", True)
        return value if isinstance(value, bool) else list(value)

    def redacted(self) -> dict[str, Any]:
        """The configuration as plain data with every secret replaced by ``***``."""
        data = {
            "core": dataclasses.asdict(self.core),
            "server": dataclasses.asdict(self.server),
            "budget": dataclasses.asdict(self.budget),
            "plugins": self.plugins,
        }
        return _redact(data, "", self.secret_paths)


def _redact(value: Any, path: str, secret_paths: set[str]) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            hidden = sub in secret_paths or (SECRET_KEY.search(str(key)) and item)
            out[key] = REDACTED if hidden else _redact(item, sub, secret_paths)
        return out
    return hide_url_secrets(value)


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """``--config``, then ``MAMI_CONFIG``, then ``./plugins.toml``; ``None`` if none exists."""
    chosen = explicit or os.environ.get("MAMI_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        return path
    default = Path("plugins.toml")
    return default if default.is_file() else None


def load_config(path: str | os.PathLike[str] | None = None, *, search: bool = True) -> Config:
    """Read and check a configuration file (or the defaults when there is none).

    Raises :class:`ConfigError` naming the file, table and key of the first problem.
    """
    resolved = find_config_path(path) if search else (Path(path) if path else None)
    raw: dict[str, Any] = {}
    if resolved is not None:
        try:
            raw = tomllib.loads(resolved.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{resolved}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{resolved}: invalid TOML: {exc}") from exc
    return config_from_dict(raw, path=resolved)


def config_from_dict(raw: Mapping[str, Any], path: Path | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML data (used by tests and by Lambda)."""
    source = str(path) if path else "<config>"
    known = {"core", "server", "budget", "plugins"}
    for table in raw:
        if table not in known:
            raise ConfigError(
                f"{source}: unknown table [{table}] (expected one of {', '.join(sorted(known))})"
            )
    secret_paths: set[str] = set()
    resolved = _resolve_env(dict(raw), "", source, secret_paths)
    plugins = resolved.get("plugins", {})
    if not isinstance(plugins, dict) or not all(isinstance(v, dict) for v in plugins.values()):
        raise ConfigError(f"{source}: [plugins] must only contain [plugins.<name>] tables")
    for name, table in plugins.items():
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):  # "false" would be truthy: refuse, never guess
            raise ConfigError(f"{source}: [plugins.{name}] enabled: expected true or false, "
                              f"got {_type_name(type(enabled))}")
        tools = table.get("tools", True)
        if not isinstance(tools, bool) and not (
                isinstance(tools, list) and all(isinstance(t, str) for t in tools)):
            raise ConfigError(f"{source}: [plugins.{name}] tools: expected true, false or a "
                              "list of tool names")
    return Config(
        path=path,
        core=validate_table(CoreSettings, resolved.get("core", {}), source, "core"),
        server=validate_table(ServerSettings, resolved.get("server", {}), source, "server"),
        budget=validate_table(BudgetSettings, resolved.get("budget", {}), source, "budget"),
        plugins=plugins,
        secret_paths=secret_paths,
    )


def _resolve_env(value: Any, path: str, source: str, secret_paths: set[str]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"env"}:
            name = value["env"]
            if name not in os.environ:
                raise ConfigError(
                    f"{source}: [{path.rpartition('.')[0]}] {path.rpartition('.')[2]}: "
                    f"environment variable {name} is not set"
                )
            secret_paths.add(path)
            return os.environ[name]
        return {
            k: _resolve_env(v, f"{path}.{k}" if path else k, source, secret_paths)
            for k, v in value.items()
        }
    return value


def validate_table(cls: type[T], data: Any, source: str, table: str) -> T:
    """Check ``data`` against the dataclass ``cls``: unknown keys, missing required keys
    and wrong types raise :class:`ConfigError` naming ``source``, ``[table]`` and the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: [{table}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in PLUGIN_KEYS and table.startswith("plugins."):
            continue
        if key not in fields:
            raise ConfigError(
                f"{source}: [{table}] {key}: unknown setting (known: {', '.join(sorted(fields))})"
            )
        values[key] = _check_type(value, hints[key], f"{source}: [{table}] {key}")
    for name, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and name not in values:
            raise ConfigError(f"{source}: [{table}] {name}: required setting is missing")
    try:
        return cls(**values)
    except ConfigError as exc:  # a range check of __post_init__: name the file too
        if not source or exc.message.startswith(f"{source}:"):
            raise
        raise ConfigError(f"{source}: {exc.message}") from exc


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _check_type(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {_type_name(type(value))}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_type_name(type(value))}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {_type_name(type(value))}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {hint.__name__}, got bool")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {_type_name(type(value))}")
    return value


def _type_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if hint in names:
        return names[hint]
    return getattr(hint, "__name__", str(hint))
