"""Provider interfaces that plugins implement.

Hooks are synchronous and *register* provider objects; the providers' methods are
async. Every method that touches user data takes the owner explicitly: there is no
way to call a retriever or a memory store without saying whose data it is.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a prompt."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling settings for one reply."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """A streamed piece of a reply. The last one carries ``finish_reason``. A provider
    whose server reports token usage puts it on a delta (usually the last, possibly one
    with empty text); mami then reports those figures instead of its own count."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """One line of ``mami doctor``: ``status`` is ``ok``, ``warn`` or ``fail``; ``fix``
    says what to do when it is not ``ok``.

    Any provider may define ``async doctor() -> list[Check]`` to add its own checks
    (files it needs, servers it talks to, permissions)."""

    name: str
    status: Literal["ok", "warn", "fail"]
    detail: str
    fix: str = ""


@runtime_checkable
class LLMProvider(Protocol):
    """A chat model.

    ``name`` is the model id shown in ``/v1/models``. ``context_window`` is the model's
    window in tokens. ``count_tokens`` uses the model's own tokenizer where it can and
    otherwise a conservative (over-)estimate. ``stream`` yields deltas; it raises
    :class:`core.errors.ProviderError` when nothing could be generated and
    :class:`core.errors.StreamInterrupted` (carrying the text so far) when a stream
    broke after the first token.

    Optional: ``async load() -> None``; when defined it is awaited before the tokenizer
    or window is used, so a lazily loaded model never blocks the event loop.
    """

    name: str
    context_window: int

    def count_tokens(self, text: str) -> int: ...

    def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Passage:
    """A chunk of a document found by a retriever; ``page`` is the 1-based page of a
    paged document (PDF) the chunk starts on, else ``None``."""

    text: str
    document_id: str
    source: str
    chunk_index: int
    scope: str
    score: float
    page: int | None = None


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A stored document of one owner."""

    id: str
    owner: str
    scope: str
    source: str
    chunks: int
    created_at: datetime | None = None


@runtime_checkable
class Retriever(Protocol):
    """Owner-scoped document store and search (RAG).

    ``search`` returns at most ``k`` passages that belong to ``owner`` (or to the
    shared ``global`` scope) and to one of ``scopes`` when given, best first.
    ``ingest`` replaces a document with the same owner, scope and source. It may take an
    optional keyword ``pages: Sequence[int]``, the offsets in ``text`` where each page
    of a paged document (PDF) starts; mami passes it only to an ``ingest`` that
    declares it, and such a retriever reports each passage's ``page``.

    Optional: ``validate(owner, source, text, scope) -> int`` raises what ``ingest``
    would raise (a :class:`core.errors.MamiError`) before anything is written and
    returns the size in bytes; the API and ``mami ingest`` check every file first.
    """

    name: str

    async def ingest(
        self, owner: str, source: str, text: str, scope: str = "default"
    ) -> DocumentInfo: ...

    async def search(
        self, owner: str, query: str, k: int = 5, scopes: Sequence[str] | None = None
    ) -> list[Passage]: ...

    async def list_documents(self, owner: str) -> list[DocumentInfo]: ...

    async def delete_document(self, owner: str, document_id: str) -> bool: ...

    async def erase_owner(self, owner: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Memory:
    """A remembered fact about an owner."""

    id: str
    owner: str
    text: str
    seen_count: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True)
class MemoryDecision:
    """What a memory store did with a candidate fact: ``added``, ``updated`` or ``skipped``.
    ``matched_memory_id`` is the closest existing memory and ``similarity`` its cosine."""

    action: Literal["added", "updated", "skipped"]
    memory_id: str
    text: str
    similarity: float | None = None
    source_message_id: str | None = None
    at: datetime | None = None
    matched_memory_id: str | None = None


@runtime_checkable
class MemoryStore(Protocol):
    """Owner-scoped memories with duplicate detection."""

    name: str

    async def remember(
        self, owner: str, text: str, source_message_id: str | None = None
    ) -> MemoryDecision: ...

    async def recall(self, owner: str, query: str, k: int = 5) -> list[Memory]: ...

    async def list_memories(self, owner: str) -> list[Memory]: ...

    async def delete_memory(self, owner: str, memory_id: str) -> bool: ...

    async def erase_owner(self, owner: str) -> int: ...

    async def history(self, owner: str, memory_id: str) -> list[MemoryDecision]: ...


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """Parameters of one text-to-image job.

    For ``sampler``, ``scheduler`` and ``checkpoint``: ``None`` means the generator's
    configured default, ``""`` the server's own default. For ``cfg_scale`` and
    ``distilled_cfg_scale``: ``None`` means the configured default, if any, else the
    server's."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    seed: int = -1
    sampler: str | None = None
    checkpoint: str | None = None
    scheduler: str | None = None
    cfg_scale: float | None = None
    distilled_cfg_scale: float | None = None


@dataclass(frozen=True, slots=True)
class ImageResult:
    """A PNG image. ``placeholder`` is true when generation failed and ``png`` only
    explains why (``reason``)."""

    png: bytes
    placeholder: bool = False
    reason: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[float], None]


@runtime_checkable
class ImageGenerator(Protocol):
    """Text-to-image backend. ``generate`` never raises for backend faults: it returns
    a placeholder result instead, within the generator's own deadline."""

    name: str

    async def generate(
        self, request: ImageRequest, progress: ProgressCallback | None = None
    ) -> ImageResult: ...

    async def health(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``owner`` is the only source of the data owner of a request."""

    owner: str
    credential_id: str | None = None
    expires_at: datetime | None = None


class WebSocketLike(Protocol):
    """The part of a WebSocket connection an authenticator may use."""

    headers: Mapping[str, str]

    async def accept(self, subprotocols: str | None = None) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...

    async def receive_text(self) -> str: ...


@runtime_checkable
class Authenticator(Protocol):
    """Turns credentials into a :class:`Principal`.

    ``authenticate_http`` raises :class:`core.errors.AuthError` (401/403) for a bad or
    missing credential. ``accept_websocket`` verifies the socket *before* anything is
    read from it by the chat handler; it accepts the socket and returns the principal,
    or closes it with a readable code and returns ``None``. ``still_valid`` is polled
    during long-lived sockets so a revoked or expired credential closes them.

    Optional: ``check_message(socket, size) -> int | None`` is called for every message
    a chat socket receives and returns a close code to refuse it (size, rate);
    ``async accept_anonymous(socket) -> bool`` guards sockets when ``[core] auth =
    false`` (it may refuse a foreign Origin).
    """

    name: str

    async def authenticate_http(
        self, headers: Mapping[str, str], client: str | None
    ) -> Principal: ...

    async def accept_websocket(self, socket: Any) -> Principal | None: ...

    async def still_valid(self, principal: Principal) -> bool: ...



COMMON_OPTIONAL = ("aclose", "health", "doctor")
OPTIONAL_METHODS: dict[str, tuple[str, ...]] = {
    "llm": ("load", *COMMON_OPTIONAL),
    "retriever": ("validate", *COMMON_OPTIONAL),
    "memory": ("page", *COMMON_OPTIONAL),
    "images": COMMON_OPTIONAL,
    "auth": ("check_message", "accept_anonymous", *COMMON_OPTIONAL),
}
"""Per provider kind, the methods mami uses when a provider has them (and never
requires). Their contracts:

- ``async load() -> None`` (llm): awaited before the tokenizer or window is used.
- ``async aclose() -> None`` (all): awaited when the app stops.
- ``validate(owner, source, text, scope) -> int`` (retriever): raises what ``ingest``
  would raise, before anything is written; returns the size in bytes.
- keyword ``pages: Sequence[int]`` of ``ingest`` (retriever): where each page of a
  paged document starts in ``text``; passed only when ``ingest`` declares it.
- ``async page(owner, limit, offset) -> tuple[list[Memory], int]`` (memory): one page of
  the owner's memories, most recently seen first, and their total.
- ``async health() -> Mapping[str, Any]`` (all): details for ``/health``.
- ``async doctor() -> list[Check]`` (all): the provider's own ``mami doctor`` checks.
- ``check_message(socket, size) -> int | None`` (auth): a close code to refuse a chat
  socket's message (size, rate), else ``None``.
- ``async accept_anonymous(socket) -> bool`` (auth): guards sockets when
  ``[core] auth = false``.
"""

PROVIDER_PROTOCOLS: dict[str, type] = {
    "llm": LLMProvider,
    "retriever": Retriever,
    "memory": MemoryStore,
    "images": ImageGenerator,
    "auth": Authenticator,
}


def protocol_problems(kind: str, provider: object) -> list[str]:
    """What ``provider`` lacks to be a ``kind`` provider: its protocol's members other
    than the optional ones must exist (methods callable, ``name`` a non-empty string);
    an optional method, when present, must be callable. Members are looked up without
    running properties, so a lazily loaded provider stays unloaded."""
    protocol = PROVIDER_PROTOCOLS[kind]
    optional = OPTIONAL_METHODS.get(kind, ())
    problems = []
    name = getattr(provider, "name", None)
    if not isinstance(name, str) or not name:
        problems.append("name: must be a non-empty string")
    for member in sorted(protocol_members(protocol) - {"name"}):
        value = inspect.getattr_static(provider, member, None)
        if value is None:
            if member not in optional:
                problems.append(f"{member}: missing")
        elif callable(getattr(protocol, member, None)) and not _callable(value):
            problems.append(f"{member}: not callable")
    for member in optional:
        value = inspect.getattr_static(provider, member, None)
        if value is not None and not _callable(value):
            problems.append(f"{member}: not callable")
    return problems


def _callable(value: object) -> bool:
    return callable(value) or isinstance(value, staticmethod | classmethod | property)


def protocol_members(protocol: type) -> set[str]:
    """The attributes and methods a Protocol class declares (not its bases')."""
    declared = {name for name, value in vars(protocol).items()
                if callable(value) and not name.startswith("_")}
    return declared | set(getattr(protocol, "__annotations__", {}))
