"""Tools a model may call: their description, the owner's tool box, and running them.

A plugin registers :class:`Tool` objects through the ``register_tools`` hook (make one
from a function with :func:`tool`: the JSON schema comes from the signature and the
docstring). ``runtime.tools`` is the :class:`ToolBox` of one app: it holds the enabled
tools (``tools = true|false|[names]`` in each ``[plugins.<name>]`` table), knows which
owner may use which (``[core] tool_owners``), gives the model their OpenAI ``tools``
entries and runs a model's :class:`~core.protocols.ToolCall`.

Running a tool never raises for the tool's fault: an unknown or forbidden name, bad
JSON arguments, an exception or a timeout all become a :class:`ToolResult` with
``is_error=True`` whose ``content`` is ``{"error": "..."}``, which the model sees.
A tool that needs the caller's owner gets it from the turn (``owner=``), never from
the model's arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import fnmatch
import functools
import inspect
import json
import logging
import re
import threading
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from core.errors import MamiError
from core.plugins import contained, describe, within
from core.protocols import ToolCall

if TYPE_CHECKING:
    from core.config import Config

__all__ = ["Tool", "ToolBox", "ToolError", "ToolRejected", "ToolResult", "Toolset", "tool"]

log = logging.getLogger("mami.tools")

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OWNER_PARAMETER = "owner"
DEFAULT_TIMEOUT = 30.0
TOOL_THREADS = 32


class ToolError(Exception):
    """Raise it from a tool to tell the model what went wrong: the model sees
    ``{"error": <message>}`` (as for a :class:`core.errors.MamiError`; other exceptions
    show as ``"<Type>: <message>"``)."""


class ToolRejected(ValueError):
    """A tool that cannot be registered: an invalid definition, or a name another
    plugin already registered."""


@dataclass(frozen=True)
class Tool:
    """A function the model may call.

    ``name`` matches ``^[a-zA-Z0-9_-]{1,64}$``; ``parameters`` is a JSON Schema of type
    ``object``; ``fn`` is sync (run in a worker thread) or async and is called with the
    arguments as keywords, plus ``owner=<str>`` when ``needs_owner``. ``timeout`` in
    seconds; ``None`` means the tool box default (``[core] tool_timeout``).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    fn: Callable[..., Any]
    needs_owner: bool = False
    timeout: float | None = None

    def __post_init__(self) -> None:
        problems = tool_problems(self)
        if problems:
            raise ToolRejected(f"tool {self.name!r}: {'; '.join(problems)}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself (handy in tests): no schema check, no timeout."""
        return self.fn(*args, **kwargs)

    def spec(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": dict(self.parameters)}}


def tool_problems(candidate: Any) -> list[str]:
    """What makes ``candidate`` unusable as a :class:`Tool` (empty when it is fine)."""
    problems = []
    name = getattr(candidate, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        problems.append("name: must match ^[a-zA-Z0-9_-]{1,64}$")
    if not isinstance(getattr(candidate, "description", None), str):
        problems.append("description: must be a string")
    parameters = getattr(candidate, "parameters", None)
    if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
        problems.append('parameters: must be a JSON Schema with "type": "object"')
    elif OWNER_PARAMETER in (parameters.get("properties") or {}) and getattr(
            candidate, "needs_owner", False):
        problems.append("parameters: 'owner' comes from the turn, not from the model")
    if not callable(getattr(candidate, "fn", None)):
        problems.append("fn: must be callable")
    timeout = getattr(candidate, "timeout", None)
    if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool)
                                or timeout <= 0):
        problems.append("timeout: must be a number of seconds greater than 0, or None")
    return problems


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one call. ``content`` is what the model sees: the JSON of the
    return value (a string as is), or ``{"error": "..."}`` when ``is_error``."""

    tool_call_id: str
    name: str
    content: str
    is_error: bool
    duration: float


@runtime_checkable
class Toolset(Protocol):
    """Tools that change while the app runs (an MCP server's, say), registered through
    ``register_tools`` like a :class:`Tool`.

    ``tools()`` returns the tools available now; it is called whenever the tool box is
    consulted, so it must be cheap (return a cached list). A name that another plugin
    already registered is skipped (and logged). Optional, as for providers:
    ``async health() -> Mapping``, ``async doctor() -> list[Check]``,
    ``async aclose() -> None``.
    """

    name: str

    def tools(self) -> Sequence[Tool]: ...


# -- tool(): a Tool from a function --------------------------------------------------------


def tool(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
         description: str | None = None, parameters: Mapping[str, Any] | None = None,
         needs_owner: bool = False, timeout: float | None = None) -> Any:
    """Make a :class:`Tool` from a function: ``@tool``, ``@tool(name=...)`` or
    ``tool(fn, ...)``.

    The name defaults to the function's, the description to its docstring (up to the
    parameter section), and ``parameters`` to a schema derived from the signature:
    ``str``, ``int``, ``float``, ``bool``, ``list[...]``, ``dict[str, ...]``,
    ``Literal[...]`` and ``Enum`` types (an Enum argument arrives as the member),
    ``X | None``, defaults (a parameter with a default is optional) and
    ``Annotated[X, "description"]``. Parameter descriptions come from a Google
    (``Args:``), reST (``:param x:``) or NumPy (``Parameters``) docstring section.
    With ``needs_owner=True`` the function's ``owner`` parameter is left out of the
    schema and filled from the turn; a function with an ``owner`` parameter must say so.
    """

    def make(func: Callable[..., Any]) -> Tool:
        summary, documented = parse_docstring(inspect.getdoc(func) or "")
        schema, convert = (dict(parameters), {}) if parameters is not None else \
            signature_schema(func, documented, needs_owner)
        target = _converting(func, convert) if convert else func
        return Tool(name or str(getattr(func, "__name__", "")),
                    summary if description is None else description,
                    schema, target, needs_owner, timeout)

    return make(fn) if fn is not None else make


SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Returns?|Raises|Yields?|"
                     r"Examples?|Notes?|See Also|Attributes)\s*:?\s*$")
GOOGLE_ARG = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
NUMPY_ARG = re.compile(r"^(\*{0,2}\w+)\s*(?::.*)?$")
REST_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """``(description, {parameter: description})`` of a cleaned docstring."""
    lines = doc.splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(lines) and not SECTION.match(lines[i].strip()) \
            and not lines[i].lstrip().startswith(":"):
        summary.append(lines[i])
        i += 1
    current: str | None = None
    section = ""
    numpy = False
    while i < len(lines):
        raw = lines[i]
        text = raw.strip()
        i += 1
        rest = REST_PARAM.match(text)
        if rest:
            current = rest.group(1)
            params[current] = rest.group(2).strip()
            continue
        header = SECTION.match(text)
        if header and raw == raw.lstrip():
            section = header.group(1).lower()
            current = None
            numpy = i < len(lines) and set(lines[i].strip()) == {"-"}
            i += numpy  # skip NumPy's underline
            continue
        if text.startswith(":"):
            current = None
            continue
        if section not in ("args", "arguments", "parameters", "params", "keyword args") \
                or not text:
            continue
        indent = len(raw) - len(raw.lstrip())
        entry = (NUMPY_ARG if numpy else GOOGLE_ARG).match(text)
        if entry and indent <= (0 if numpy else 4):
            current = entry.group(1).lstrip("*")
            params[current] = "" if numpy else entry.group(2).strip()
        elif current is not None:
            params[current] = f"{params[current]} {text}".strip()
    return "\n".join(summary).strip(), params


def signature_schema(func: Callable[..., Any], documented: Mapping[str, str] | None = None,
                     needs_owner: bool = False
                     ) -> tuple[dict[str, Any], dict[str, Callable[[Any], Any]]]:
    """The JSON schema of ``func``'s parameters, and converters for the parameters that
    need one (Enum types). Raises :class:`ToolRejected` for what cannot be described."""
    where = getattr(func, "__qualname__", repr(func))
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise ToolRejected(f"tool {where}: its annotations cannot be resolved: "
                           f"{describe(exc)}") from exc
    properties: dict[str, Any] = {}
    required: list[str] = []
    convert: dict[str, Callable[[Any], Any]] = {}
    extra = False
    for param in inspect.signature(func).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            continue
        if param.kind is param.VAR_KEYWORD:
            extra = True
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolRejected(f"tool {where}: parameter {param.name} is positional-only; "
                               "tools are called with keywords")
        if param.name == OWNER_PARAMETER:
            if not needs_owner:
                raise ToolRejected(f"tool {where}: a parameter named 'owner' must come from "
                                   "the turn: pass needs_owner=True")
            continue
        hint = hints.get(param.name, inspect.Parameter.empty)
        schema = type_schema(hint)
        if documented and documented.get(param.name) and "description" not in schema:
            schema["description"] = documented[param.name]
        if param.default is not param.empty:
            if param.default is not None and _is_json(param.default):
                schema["default"] = param.default
        else:
            required.append(param.name)
        converter = _enum_of(hint)
        if converter is not None:
            convert[param.name] = converter
        properties[param.name] = schema
    if needs_owner and OWNER_PARAMETER not in inspect.signature(func).parameters and not extra:
        raise ToolRejected(f"tool {where}: needs_owner=True but it takes no 'owner' parameter")
    schema_out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema_out["required"] = required
    schema_out["additionalProperties"] = extra
    return schema_out, convert


def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of one annotation (``{}``, anything, when it says nothing)."""
    if hint is inspect.Parameter.empty or hint is Any:
        return {}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = type_schema(args[0])
        text = next((m for m in args[1:] if isinstance(m, str)), None)
        if text:
            schema["description"] = text
        return schema
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        schema = type_schema(options[0]) if len(options) == 1 else \
            {"anyOf": [type_schema(a) for a in options]}
        return _nullable(schema) if len(options) < len(args) else schema
    if origin is Literal:
        return _enum_schema(list(args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([member.value for member in hint])
    if hint is type(None) or hint is None:
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    container = origin or hint
    if isinstance(container, type) and issubclass(container, Mapping | dict):
        value = type_schema(args[1]) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": value or True}
    if isinstance(container, type) and issubclass(container, list | tuple | set | frozenset
                                                   | Sequence) and container is not str:
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return {"type": "array", "prefixItems": [type_schema(a) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        item = type_schema(args[0]) if args else {}
        return {"type": "array", "items": item} if item else {"type": "array"}
    if dataclasses.is_dataclass(hint) or (isinstance(hint, type) and typing.is_typeddict(hint)):
        return {"type": "object"}
    return {}


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string"}.get(type(value))


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    kinds = {_json_type(v) for v in values}
    schema: dict[str, Any] = {"enum": values}
    if len(kinds) == 1 and None not in kinds:
        schema = {"type": kinds.pop(), "enum": values}
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if isinstance(schema.get("type"), str):
        schema = {**schema, "type": [schema["type"], "null"]}
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        return schema
    if not schema:
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _enum_of(hint: Any) -> Callable[[Any], Any] | None:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _enum_of(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _enum_of(options[0]) if len(options) == 1 else None
        return None if inner is None else (lambda v: None if v is None else inner(v))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    return None


def _converting(func: Callable[..., Any], convert: Mapping[str, Callable[[Any], Any]]
                ) -> Callable[..., Any]:
    def converted(kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: convert[k](v) if k in convert else v for k, v in kwargs.items()}

    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            return await func(*args, **converted(kwargs))
        return run_async

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **converted(kwargs))
    return run


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# -- checking arguments --------------------------------------------------------------------

JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def argument_problem(schema: Mapping[str, Any], value: Any, where: str = "arguments"
                     ) -> str | None:
    """The first way ``value`` breaks the common parts of ``schema`` (``type``,
    ``enum``, ``required``, ``properties``, ``additionalProperties: false``, ``items``),
    or ``None``. Other keywords are left to the tool."""
    kinds = schema.get("type")
    if kinds is not None:
        wanted = [kinds] if isinstance(kinds, str) else list(kinds)
        known = [k for k in wanted if k in JSON_TYPES]
        if known and not any(JSON_TYPES[k](value) for k in known):
            return f"{where}: expected {' or '.join(known)}, got {_kind(value)}"
    if "enum" in schema and value not in list(schema["enum"]):
        choices = ", ".join(json.dumps(v) for v in schema["enum"])
        return f"{where}: must be one of {choices}"
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                return f"{where}: missing required argument {name!r}"
        if schema.get("additionalProperties") is False:
            unknown = sorted(set(value) - set(props))
            if unknown:
                return f"{where}: unknown argument {unknown[0]!r} (known: " \
                       f"{', '.join(props) or 'none'})"
        for name, item in value.items():
            sub = props.get(name)
            if isinstance(sub, Mapping):
                problem = argument_problem(sub, item, f"{where}.{name}" if where != "arguments"
                                           else name)
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problem = argument_problem(schema["items"], item, f"{where}[{i}]")
            if problem:
                return problem
    return None


def _kind(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if JSON_TYPES[name](value):
            return name
    return type(value).__name__


def parse_arguments(text: str) -> dict[str, Any]:
    """The arguments object of a call (empty text: no arguments). Raises ValueError."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the arguments are not valid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"the arguments must be a JSON object, got {_kind(value)}")
    return value


def to_content(value: Any) -> str:
    """What the model sees of a return value: a string as is, anything else as JSON
    (dataclasses, datetimes, enums and sets included)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    dump = getattr(value, "model_dump", None)  # pydantic
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"a {type(value).__name__} is not JSON")


def error_content(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


# -- the tool box --------------------------------------------------------------------------


Selection = bool | Sequence[str]


@dataclass
class _Entry:
    tool: Tool
    plugin: str


class ToolBox:
    """The tools of one app (``runtime.tools``).

    ``timeout`` is the default per call (``[core] tool_timeout``). ``owners`` is the
    allow-list (``[core] tool_owners``): owner -> name patterns (``fnmatch``), with
    ``"*"`` for every other owner; empty, every owner may use every tool. ``selection``
    gives each plugin's ``tools`` setting: ``True`` (all of its tools), ``False`` (none)
    or a list of name patterns.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT,
                 owners: Mapping[str, Sequence[str]] | None = None,
                 selection: Callable[[str], Selection] | None = None) -> None:
        self.timeout = timeout
        self.owners: Mapping[str, Sequence[str]] = owners or {}
        self.selection: Callable[[str], Selection] = selection or (lambda plugin: True)
        self._tools: dict[str, _Entry] = {}
        self._sets: list[tuple[str, Toolset]] = []
        self._retired: list[Toolset] = []
        self._clashes: set[tuple[str, str]] = set()
        self._offered: dict[str, list[str]] = {}  # plugin -> its tools' names, enabled or not
        self._threads = 0

    @classmethod
    def from_config(cls, config: Config) -> ToolBox:
        return cls(timeout=config.core.tool_timeout, owners=config.core.tool_owners,
                   selection=config.plugin_tools)

    # registering

    def enabled(self, plugin: str, name: str) -> bool:
        """Whether ``plugin``'s ``tools`` setting lets its tool ``name`` in."""
        choice = self.selection(plugin)
        if isinstance(choice, bool):
            return choice
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in choice)

    def add(self, item: Tool | Toolset, plugin: str = "") -> bool:
        """Register a tool (or a toolset) of ``plugin``. Returns whether it is enabled;
        raises :class:`ToolRejected` for an invalid one or a name another plugin (or
        the same plugin) already registered, naming the plugin that has it."""
        if isinstance(item, Tool):
            problems = tool_problems(item)
            if problems:
                raise ToolRejected(f"tool {item.name!r}: {'; '.join(problems)}")
            self._offered.setdefault(plugin, []).append(item.name)
            if not self.enabled(plugin, item.name):
                return False
            self._claim(item.name, plugin)
            self._tools[item.name] = _Entry(item, plugin)
            return True
        if not (isinstance(getattr(item, "name", None), str) and callable(
                getattr(item, "tools", None))):
            raise ToolRejected(f"register_tools: expected a Tool or a Toolset, got "
                               f"{type(item).__name__}")
        for current in item.tools():
            if not isinstance(current, Tool):
                raise ToolRejected(f"toolset {item.name!r}: tools() gave a "
                                   f"{type(current).__name__}, not a Tool")
            if self.enabled(plugin, current.name):
                self._claim(current.name, plugin)
        self._sets.append((plugin, item))
        return self.selection(plugin) is not False

    def _claim(self, name: str, plugin: str) -> None:
        holder = self._holder(name)
        if holder is not None:
            raise ToolRejected(f"tool name {name!r} is already registered by plugin "
                               f"{holder or 'core'}")

    def _holder(self, name: str) -> str | None:
        if name in self._tools:
            return self._tools[name].plugin
        for plugin, toolset in self._sets:
            if any(t.name == name for t in toolset.tools()):
                return plugin
        return None

    def remove_plugin(self, plugin: str) -> None:
        """Drop every tool and toolset of ``plugin`` (it failed); its toolsets are still
        closed with the others (:attr:`to_close`)."""
        self._tools = {n: e for n, e in self._tools.items() if e.plugin != plugin}
        self._offered.pop(plugin, None)
        self._retired.extend(s for p, s in self._sets if p == plugin)
        self._sets = [(p, s) for p, s in self._sets if p != plugin]

    def names_of(self, plugin: str) -> list[str]:
        """Every tool ``plugin`` registered, enabled or not (a toolset's: those it lists
        now), in registration order."""
        names = list(self._offered.get(plugin, ()))
        for owner, toolset in self._sets:
            if owner == plugin:
                with contextlib.suppress(Exception):  # _entries logs a failing toolset
                    names.extend(t.name for t in toolset.tools() if isinstance(t, Tool))
        return list(dict.fromkeys(names))

    def unmatched(self, plugin: str) -> list[str]:
        """The patterns of ``plugin``'s ``tools`` list that match none of its tools
        (a typo there silently leaves a tool out); ``[]`` for ``true`` or ``false``."""
        choice = self.selection(plugin)
        if isinstance(choice, bool):
            return []
        names = self.names_of(plugin)
        return [pattern for pattern in choice
                if not any(fnmatch.fnmatchcase(name, pattern) for name in names)]

    @property
    def toolsets(self) -> list[tuple[str, Toolset]]:
        """``(plugin, toolset)`` pairs in use, for health and doctor."""
        return list(self._sets)

    @property
    def to_close(self) -> list[Toolset]:
        """Every toolset ever registered, in use or dropped, for closing at the end."""
        return [*(s for _, s in self._sets), *self._retired]

    def _entries(self) -> dict[str, _Entry]:
        found = dict(self._tools)
        for plugin, toolset in self._sets:
            try:
                current = list(toolset.tools())
            except Exception as exc:
                log.error("toolset %s of plugin %s failed to list its tools: %s",
                          toolset.name, plugin, describe(exc))
                continue
            for item in current:
                if not isinstance(item, Tool) or not self.enabled(plugin, item.name):
                    continue
                if item.name in found:
                    if found[item.name].plugin != plugin and \
                            (item.name, plugin) not in self._clashes:
                        self._clashes.add((item.name, plugin))
                        log.warning("tool %s of plugin %s is skipped: plugin %s has that name",
                                    item.name, plugin, found[item.name].plugin or "core")
                    continue
                found[item.name] = _Entry(item, plugin)
        return found

    # using

    def allowed(self, owner: str, name: str) -> bool:
        """Whether ``owner`` may use the tool ``name`` under ``[core] tool_owners``."""
        if not self.owners:
            return True
        patterns = self.owners.get(owner, self.owners.get("*", ()))
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    def tools(self, owner: str) -> list[Tool]:
        """The enabled tools ``owner`` may use, in registration order."""
        return [e.tool for n, e in self._entries().items() if self.allowed(owner, n)]

    def by_plugin(self) -> dict[str, list[str]]:
        """The enabled tools' names per plugin (whatever the owner)."""
        found: dict[str, list[str]] = {}
        for name, entry in self._entries().items():
            found.setdefault(entry.plugin, []).append(name)
        return found

    def plugin_of(self, name: str) -> str | None:
        entry = self._entries().get(name)
        return entry.plugin if entry else None

    def specs(self, owner: str) -> list[dict[str, Any]]:
        """OpenAI ``tools`` entries of the enabled tools ``owner`` may use (``[]`` when
        none)."""
        return [t.spec() for t in self.tools(owner)]

    def has(self, name: str, owner: str) -> bool:
        return self.allowed(owner, name) and name in self._entries()

    def _find(self, name: str, owner: str) -> Tool | None:
        if not self.allowed(owner, name):
            return None
        entry = self._entries().get(name)
        return entry.tool if entry else None

    async def call(self, call: ToolCall, *, owner: str) -> ToolResult:
        """Run one call of the model in ``owner``'s turn. Never raises for the tool's
        fault: an unknown or forbidden name, bad arguments, an exception and a timeout
        all give ``is_error=True`` with a message. Cancelling the caller cancels it."""
        started = time.perf_counter()

        def done(content: str, is_error: bool) -> ToolResult:
            return ToolResult(call.id, call.name, content, is_error,
                              time.perf_counter() - started)

        def failed(message: str) -> ToolResult:
            log.warning("tool call %s (%s) failed: %s", call.id, call.name, message)
            return done(error_content(message), True)

        found = self._find(call.name, owner)
        if found is None:
            return failed(f"no tool named {call.name!r} is available")
        try:
            arguments = parse_arguments(call.arguments)
        except ValueError as exc:
            return failed(str(exc))
        if found.needs_owner and OWNER_PARAMETER in arguments:
            return failed("unknown argument 'owner' (the owner comes from the conversation)")
        problem = argument_problem(found.parameters, arguments)
        if problem:
            return failed(problem)
        if found.needs_owner:
            arguments[OWNER_PARAMETER] = owner
        limit = found.timeout or self.timeout
        try:
            value = await within(self._run(found, arguments), limit)
        except TimeoutError:
            return failed(f"tool {found.name} timed out after {limit:g}s")
        except (ToolError, MamiError) as exc:  # messages written for a reader
            return failed(str(exc) or type(exc).__name__)
        except BaseException as exc:
            if not contained(exc):
                raise
            return failed(describe(exc))
        try:
            return done(to_content(value), False)
        except (TypeError, ValueError) as exc:
            return failed(f"tool {found.name} returned something that is not JSON: {exc}")


    async def _run(self, found: Tool, arguments: dict[str, Any]) -> Any:
        try:
            if inspect.iscoroutinefunction(found.fn) or inspect.iscoroutinefunction(
                    type(found.fn).__call__):
                result = found.fn(**arguments)
            else:
                result = await self._in_thread(found.fn, arguments)
            if inspect.isawaitable(result):
                result = await result
        except TimeoutError as exc:  # the tool's own, not ours
            raise ToolError(describe(exc)) from exc
        except TypeError as exc:
            if _bad_signature(found.fn, arguments):
                raise ToolError(f"bad arguments: {exc}") from exc
            raise
        return result

    async def _in_thread(self, fn: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        """Run a sync tool in a daemon thread of its own: a tool that hangs past its
        timeout keeps its thread (threads cannot be stopped), so it must neither starve
        the loop's default pool nor hold the process at exit. At most ``TOOL_THREADS``
        run at once."""
        if self._threads >= TOOL_THREADS:
            raise ToolError("too many tool calls are running; try again later")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def settle(result: Any, error: BaseException | None) -> None:
            self._threads -= 1
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def work() -> None:
            try:
                outcome, error = context.run(fn, **arguments), None
            except BaseException as exc:
                outcome, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(settle, outcome, error)

        self._threads += 1
        try:
            threading.Thread(target=work, name=f"mami-tool {getattr(fn, '__name__', '')}",
                             daemon=True).start()
        except BaseException:
            self._threads -= 1
            raise
        return await future


def _bad_signature(fn: Callable[..., Any], arguments: Mapping[str, Any]) -> bool:
    try:
        inspect.signature(fn).bind(**arguments)
    except TypeError:
        return True
    except ValueError:
        return False
    return False
