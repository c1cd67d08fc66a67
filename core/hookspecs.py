"""The hooks a mami plugin can implement (the reference is ``docs/plugins.md``).

Every hook is synchronous. Provider hooks receive a ``register`` callback and call it
with objects whose methods are async (see :mod:`core.protocols`); each object is checked
against its protocol when registered, and a provider name another plugin already
registered fails the second plugin (``core.protocols.OPTIONAL_METHODS`` lists the
methods a provider may add). A provider hook that registers nothing on purpose (a
setting it needs is empty) says why with ``runtime.provider_off(<plugin name>, <kind>,
<reason>)``: a route that needs that kind then answers 503 with the reason. Lifecycle and event
hooks may return an awaitable, which mami awaits. Each plugin reads its own settings
with ``runtime.settings(<plugin name>)``.

As with pluggy, an implementation may take any subset of a hook's arguments, by name
(``def register_llm_providers(register)`` is fine). Each implementation is called on
its own: one that raises marks only its plugin failed. Hook wrappers
(``wrapper=True``, ``hookwrapper=True``) are refused.

Event hooks (``message_completed``, ``image_finished``) are delivered to every
implementation concurrently, each on its own with ``[core] event_timeout`` seconds; a
synchronous implementation runs in a worker thread. One that raises or hangs is logged
and timed out and does not stop or delay the others.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

from core.protocols import Authenticator, ImageGenerator, LLMProvider, MemoryStore, Retriever

if TYPE_CHECKING:
    from core.chat import ChatCommand
    from core.events import ImageFinished, MessageCompleted
    from core.migrations import MigrationSource
    from core.runtime import Runtime
    from core.tools import Tool, Toolset

hookspec = pluggy.HookspecMarker("mami")


@hookspec
def register_llm_providers(register: Callable[[LLMProvider], None], runtime: Runtime) -> None:
    """Register chat models by calling ``register(provider)`` once per model.

    Receives the runtime for settings and paths. Returns nothing; every
    implementation is called. The active model is ``[core] llm`` or the first one
    registered.
    """


@hookspec
def register_retrievers(register: Callable[[Retriever], None], runtime: Runtime) -> None:
    """Register document stores for retrieval-augmented generation (RAG).

    Every implementation is called; the active retriever is ``[core] retriever`` or
    the first one registered.
    """


@hookspec
def register_memory_stores(register: Callable[[MemoryStore], None], runtime: Runtime) -> None:
    """Register memory stores. Every implementation is called; the active one is
    ``[core] memory`` or the first registered."""


@hookspec
def register_image_generators(
    register: Callable[[ImageGenerator], None], runtime: Runtime
) -> None:
    """Register text-to-image backends. Every implementation is called; the active
    one is ``[core] images`` or the first registered."""


@hookspec
def register_authenticators(register: Callable[[Authenticator], None], runtime: Runtime) -> None:
    """Register authenticators. Every implementation is called; the first registered
    one authenticates every HTTP request and WebSocket."""


@hookspec
def register_tools(register: Callable[[Tool | Toolset], None], runtime: Runtime) -> None:
    """Register tools the model may call with ``register(tool)``: a
    :class:`core.tools.Tool` (``core.tools.tool(fn)`` makes one from a function), or a
    :class:`core.tools.Toolset` whose tools change while the app runs.

    Called once per runtime at start, after every plugin's ``startup``; every
    implementation is called. An invalid tool, or a name another plugin already
    registered, fails the second plugin (naming the first). Each plugin's ``tools``
    setting in ``plugins.toml`` (``true``, ``false`` or a list of names) says which of
    its tools are enabled.
    """


@hookspec
def register_routes(runtime: Runtime) -> list[Any] | None:
    """Return extra Litestar route handlers (or routers) to mount on the app.

    Every implementation is called; the lists are concatenated.
    """


@hookspec
def register_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add sub-commands to the ``mami`` CLI with ``subparsers.add_parser(...)``.

    A command sets ``func`` with ``parser.set_defaults(func=callable)``; the callable
    receives the parsed ``argparse.Namespace`` and returns an exit code. Every
    implementation is called.
    """


@hookspec
def register_chat_commands(register: Callable[[ChatCommand], None], runtime: Runtime) -> None:
    """Register slash commands for chat with ``register(ChatCommand(name, handler))``.

    A message starting with ``/<name>`` is answered by ``await handler(runtime,
    principal, argument, conversation_id)`` instead of the LLM; the text it returns is
    stored as the assistant message. Called once per runtime at start; every
    implementation is called. A name registered twice fails the second plugin.
    """


@hookspec
def register_migrations(register: Callable[[MigrationSource], None]) -> None:
    """Register the plugin's own Alembic migrations with ``register(MigrationSource(
    branch, versions))``: a versions directory whose first revision has
    ``branch_labels = (branch,)`` and ``down_revision = None``.

    ``mami db upgrade`` upgrades every branch to its head; ``mami db check`` compares
    every branch's models too. Called without a runtime (by ``mami db`` and at start);
    a disabled plugin's migrations (and tables) are left alone.
    """


@hookspec
def startup(runtime: Runtime) -> Awaitable[None] | None:
    """Called once when the app starts, after providers are registered.

    May return an awaitable. A plugin that raises here, or whose awaitable runs past
    ``[core] startup_timeout`` (it is then cancelled), is marked failed and the app runs
    on without it.
    """


@hookspec
def shutdown(runtime: Runtime) -> Awaitable[None] | None:
    """Called once when the app stops. May return an awaitable. Errors are logged."""


@hookspec
def message_completed(event: MessageCompleted, runtime: Runtime) -> Awaitable[None] | None:
    """An assistant message was stored with status ``complete``.

    Fired exactly once per assistant message, after it is committed; never for partial
    deltas, interrupted or failed replies. ``event.message_id`` is stable, so an
    implementation can use it as an idempotency key (see ``runtime.claim_once``).
    """


@hookspec
def image_finished(event: ImageFinished, runtime: Runtime) -> Awaitable[None] | None:
    """An image job reached a final state (succeeded, placeholder or failed).

    Each implementation runs isolated with a timeout; an error is recorded on the job
    and never affects the queue.
    """
