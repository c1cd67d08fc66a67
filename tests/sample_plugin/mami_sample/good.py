"""A working third-party plugin that implements every mami hook but ``register_migrations``
(``tests/notes_plugin`` has that one); used by the meta-test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from litestar import get
from litestar.datastructures import State

from core import hookimpl
from core.chat import ChatCommand
from core.protocols import ChatMessage, Delta, GenerationParams, ImageResult, Principal


@dataclass
class Settings:
    """``[plugins.sample]``."""

    greeting: str = "hello"
    times: int = 1


class EchoModel:
    """Repeats the last user message back, word by word."""

    name = "sample-echo"
    context_window = 2048

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    async def stream(
        self, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta]:
        words = messages[-1].content.split()
        for word in words:
            yield Delta(word + " ")
        yield Delta("", finish_reason="stop")

    async def aclose(self) -> None:
        return None


class Registry:
    """Remembers what each hook saw, so tests can check the calls."""

    calls: list[str] = []


class Anything:
    """A provider object for the non-LLM register hooks."""

    def __init__(self, kind: str) -> None:
        self.name = f"sample-{kind}"

    async def generate(self, request: Any, progress: Any = None) -> ImageResult:
        return ImageResult(png=b"", placeholder=True, reason="sample")

    async def authenticate_http(self, headers: Any, client: Any) -> Principal:
        return Principal(owner="sample")


@hookimpl
def register_llm_providers(register: Any, runtime: Any) -> None:
    register(EchoModel())


@hookimpl
def register_retrievers(register: Any, runtime: Any) -> None:
    Registry.calls.append("register_retrievers")


@hookimpl
def register_memory_stores(register: Any, runtime: Any) -> None:
    Registry.calls.append("register_memory_stores")


@hookimpl
def register_image_generators(register: Any, runtime: Any) -> None:
    register(Anything("images"))


@hookimpl
def register_authenticators(register: Any, runtime: Any) -> None:
    Registry.calls.append("register_authenticators")


@get("/sample/hello", sync_to_thread=False)
def hello(state: State) -> dict[str, str]:
    settings = state.runtime.settings("sample")
    return {"message": " ".join([settings.greeting] * settings.times)}


@hookimpl
def register_routes(runtime: Any) -> list[Any]:
    return [hello]


@hookimpl
def register_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("sample-hello", help="print a greeting (sample plugin)")
    parser.set_defaults(func=lambda args: print("hello from sample") or 0)


async def shout(runtime: Any, principal: Principal, argument: str, conversation_id: Any) -> str:
    return argument.upper()


@hookimpl
def register_chat_commands(register: Any, runtime: Any) -> None:
    register(ChatCommand("shout", shout, "repeat, louder"))


@hookimpl
def startup(runtime: Any) -> None:
    Registry.calls.append("startup")


@hookimpl
async def shutdown(runtime: Any) -> None:
    Registry.calls.append("shutdown")


@hookimpl
async def message_completed(event: Any, runtime: Any) -> None:
    Registry.calls.append(f"message_completed:{event.message_id}")


@hookimpl
def image_finished(event: Any, runtime: Any) -> None:
    Registry.calls.append(f"image_finished:{event.job_id}")
