"""The chat pipeline against the real local model, a stand-in OpenAI-compatible server
for faults, and SQLite plus PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlmodel import col, select

from core import hookimpl
from core.chat import ChatRequest, Conflict, Finished, TurnRun, start_turn
from core.errors import BadRequest, NotFound, PayloadTooLarge
from core.models import Conversation, Message, Owner
from core.protocols import (
    ChatMessage,
    Delta,
    GenerationParams,
    Memory,
    Passage,
    Principal,
    ToolCallDelta,
)
from core.runtime import Runtime
from core.tools import tool
from tests.chat_support import (
    LOCAL,
    OPENAI,
    Recorder,
    StandIn,
    UnusedMemoryMethods,
    UnusedRetrieverMethods,
    command_plugin,
    plugin_object,
)

FAST = GenerationParams(max_tokens=8, temperature=0.0)
ALICE = Principal("alice")


def openai_table(standin: StandIn, **extra: Any) -> dict[str, Any]:
    """No test here waits for a timeout: they only have to let the stand-in's answer in
    on a loaded machine (a timed-out request is sent again, and counts show it)."""
    return {"openai-llm": {"base_url": standin.url, "model": "standin", "read_timeout": 10.0,
                           "connect_timeout": 5.0, "attempts": 2, "retry_budget": 30.0,
                           **extra}}


async def drain(turn: TurnRun) -> tuple[list[str], Finished]:
    pieces: list[str] = []
    finished = None
    async for item in turn.run():
        if isinstance(item, Finished):
            finished = item
        else:
            pieces.append(item)
    assert finished is not None
    return pieces, finished


async def rows(runtime: Runtime, conversation_id: str) -> list[Message]:
    async with runtime.db.session() as session:
        found = await session.exec(select(Message).where(
            Message.conversation_id == conversation_id).order_by(col(Message.seq)))
        return list(found.all())


async def test_a_turn_is_stored_and_fires_message_completed_once(
    make_runtime: Any, database_url: str
) -> None:
    recorder = Recorder()
    runtime = await make_runtime(LOCAL, plugin_object("recorder", recorder),
                                 database_url=database_url)
    turn = await start_turn(runtime, ALICE, ChatRequest("Say hello.", params=FAST))
    pieces, finished = await drain(turn)
    assert finished.status == "complete" and finished.text == "".join(pieces) != ""
    stored = await rows(runtime, turn.conversation_id or "")
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert stored[0].content == "Say hello." and stored[1].content == finished.text
    assert stored[1].reply_to == stored[0].id and stored[1].id == finished.message_id
    assert finished.usage.prompt_tokens > 0
    assert finished.usage.completion_tokens == runtime.require("llm").count_tokens(finished.text)
    assert [(e.message_id, e.user_message_id, e.owner, e.assistant_text)
            for e in recorder.events] == [(stored[1].id, stored[0].id, "alice", finished.text)]
    async with runtime.db.session() as session:
        assert await session.get(Owner, "alice") is not None


async def test_a_retried_client_message_id_replays_without_generating(
    make_runtime: Any, database_url: str
) -> None:
    recorder = Recorder()
    runtime = await make_runtime(LOCAL, plugin_object("recorder", recorder),
                                 database_url=database_url)
    request = ChatRequest("Tell me a word.", client_message_id="m-1",
                          params=GenerationParams(max_tokens=12, temperature=1.5))
    first = await start_turn(runtime, ALICE, request)
    _, done = await drain(first)
    # The retry does not know the conversation id: it is derived from the client id.
    again = await start_turn(runtime, ALICE, request)
    assert again.replay is not None and again.conversation_id == first.conversation_id
    pieces, replayed = await drain(again)
    assert replayed.text == done.text and replayed.message_id == done.message_id
    assert pieces == [done.text]
    explicit = ChatRequest("Tell me a word.", conversation_id=first.conversation_id,
                           client_message_id="m-1")
    _, third = await drain(await start_turn(runtime, ALICE, explicit))
    assert third.message_id == done.message_id
    assert len(await rows(runtime, first.conversation_id or "")) == 2
    assert len(recorder.events) == 1
    with pytest.raises(Conflict):
        await start_turn(runtime, ALICE, ChatRequest("Something else", client_message_id="m-1"))
    assert len(await rows(runtime, first.conversation_id or "")) == 2


async def test_a_cut_stream_is_stored_interrupted_and_a_retry_completes_it(
    make_runtime: Any, standin: StandIn, database_url: str
) -> None:
    recorder = Recorder()
    runtime = await make_runtime(OPENAI, plugin_object("recorder", recorder),
                                 database_url=database_url, plugins=openai_table(standin))
    standin.mode = "cut"
    request = ChatRequest("hi", client_message_id="c-1", params=FAST)
    turn = await start_turn(runtime, ALICE, request)
    pieces, finished = await drain(turn)
    assert pieces == ["Hello", " from"]
    assert finished.status == "interrupted" and finished.text == "Hello from"
    assert finished.error and "broke" in finished.error
    stored = await rows(runtime, turn.conversation_id or "")
    assert (stored[1].status, stored[1].content) == ("interrupted", "Hello from")
    assert recorder.events == []

    standin.mode = "ok"
    retry = await start_turn(runtime, ALICE, request)
    assert retry.replay is None and retry.message_id == turn.message_id
    _, done = await drain(retry)
    assert done.status == "complete" and done.text == "Hello from the stand-in."
    stored = await rows(runtime, turn.conversation_id or "")
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
    assert [e.message_id for e in recorder.events] == [turn.message_id]


async def test_a_provider_error_before_any_token_is_stored_as_error(
    make_runtime: Any, standin: StandIn
) -> None:
    recorder = Recorder()
    runtime = await make_runtime(OPENAI, plugin_object("recorder", recorder),
                                 plugins=openai_table(standin))
    standin.mode = "status400"
    turn = await start_turn(runtime, ALICE, ChatRequest("hi", params=FAST))
    pieces, finished = await drain(turn)
    assert pieces == [] and finished.status == "error" and finished.error_code == 502
    assert "stand-in says 400" in (finished.error or "")
    stored = await rows(runtime, turn.conversation_id or "")
    assert (stored[1].status, stored[1].error) == ("error", finished.error)
    assert recorder.events == []


async def test_closing_the_stream_early_stores_what_arrived_as_interrupted(
    make_runtime: Any,
) -> None:
    recorder = Recorder()
    runtime = await make_runtime(LOCAL, plugin_object("recorder", recorder))
    turn = await start_turn(runtime, ALICE, ChatRequest(
        "Write a long story about a dragon.", params=GenerationParams(max_tokens=200)))
    items = turn.run()
    got = [await anext(items), await anext(items)]
    await items.aclose()  # type: ignore[attr-defined]
    stored = await rows(runtime, turn.conversation_id or "")
    assert (stored[1].status, stored[1].content) == ("interrupted", "".join(got))  # type: ignore[arg-type]
    assert recorder.events == []
    # The model was released: the next turn runs.
    _, finished = await drain(await start_turn(runtime, ALICE, ChatRequest("Hi", params=FAST)))
    assert finished.status == "complete"


async def test_a_message_too_large_is_413_and_writes_nothing(make_runtime: Any) -> None:
    runtime = await make_runtime(LOCAL)
    with pytest.raises(PayloadTooLarge) as err:
        await start_turn(runtime, ALICE, ChatRequest("lorem ipsum " * 6000))
    assert "tokens" in err.value.message
    async with runtime.db.session() as session:
        assert (await session.exec(select(Message))).all() == []
        assert (await session.exec(select(Conversation))).all() == []


async def test_another_owners_conversation_is_not_found(make_runtime: Any) -> None:
    runtime = await make_runtime(LOCAL)
    turn = await start_turn(runtime, ALICE, ChatRequest("hi", params=FAST))
    await drain(turn)
    with pytest.raises(NotFound):
        await start_turn(runtime, Principal("bob"),
                         ChatRequest("hi", conversation_id=turn.conversation_id))
    assert len(await rows(runtime, turn.conversation_id or "")) == 2


async def test_history_of_the_conversation_is_sent_to_the_model(
    make_runtime: Any, standin: StandIn
) -> None:
    runtime = await make_runtime(OPENAI, plugins=openai_table(standin))
    first = await start_turn(runtime, ALICE, ChatRequest("my name is Ada", params=FAST))
    await drain(first)
    second = await start_turn(runtime, ALICE, ChatRequest(
        "what is my name?", conversation_id=first.conversation_id, params=FAST))
    await drain(second)
    sent = standin.requests[-1][1]["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "my name is Ada"), ("assistant", "Hello from the stand-in."),
        ("user", "what is my name?")]
    assert sent[0]["role"] == "system" and "mami" in sent[0]["content"]


class BrokenRecall(UnusedMemoryMethods):
    name = "broken-memory"

    async def recall(self, owner: str, query: str, k: int = 5) -> list[Memory]:
        raise RuntimeError("memory backend down")


class BrokenSearch(UnusedRetrieverMethods):
    name = "broken-rag"

    async def search(self, owner: str, query: str, k: int = 5, scopes: Any = None
                     ) -> list[Passage]:
        raise RuntimeError("vector store down")


class Remembering(UnusedMemoryMethods):
    name = "fixed-memory"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    async def recall(self, owner: str, query: str, k: int = 5) -> list[Memory]:
        self.calls.append((owner, query, k))
        return [Memory(id="m1", owner=owner, text="The user's cat is called Mochi.")]


class ProviderPlugin:
    def __init__(self, memory: Any = None, retriever: Any = None) -> None:
        self.memory, self.retriever = memory, retriever

    @hookimpl
    def register_memory_stores(self, register: Any, runtime: Any) -> None:
        if self.memory:
            register(self.memory)

    @hookimpl
    def register_retrievers(self, register: Any, runtime: Any) -> None:
        if self.retriever:
            register(self.retriever)


async def test_failing_memory_and_rag_providers_are_skipped(
    make_runtime: Any, standin: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = ProviderPlugin(BrokenRecall(), BrokenSearch())
    runtime = await make_runtime(OPENAI, plugin_object("broken", plugin),
                                 plugins=openai_table(standin))
    _, finished = await drain(await start_turn(runtime, ALICE, ChatRequest("hi", params=FAST)))
    assert finished.status == "complete"
    assert "memory backend down" in caplog.text and "vector store down" in caplog.text


async def test_recalled_memories_reach_the_prompt_for_the_callers_owner(
    make_runtime: Any, standin: StandIn
) -> None:
    memory = Remembering()
    runtime = await make_runtime(OPENAI, plugin_object("mem", ProviderPlugin(memory)),
                                 plugins=openai_table(standin))
    await drain(await start_turn(runtime, ALICE, ChatRequest("what is my cat called?",
                                                             params=FAST)))
    assert memory.calls == [("alice", "what is my cat called?", 5)]
    assert "Mochi" in standin.requests[-1][1]["messages"][0]["content"]


async def test_dropped_turns_are_folded_into_a_running_summary(
    make_runtime: Any, standin: StandIn
) -> None:
    runtime = await make_runtime(
        OPENAI, plugins=openai_table(standin, context_window=260),
        budget={"summarize": True, "reply_tokens": 40, "summary_tokens": 40},
    )
    conversation: str | None = None
    for i in range(6):
        turn = await start_turn(runtime, ALICE, ChatRequest(
            f"message {i} " + "padding " * 12, conversation_id=conversation, params=FAST))
        conversation = turn.conversation_id
        await drain(turn)
    async with runtime.db.session() as session:
        stored = await session.get(Conversation, conversation)
    assert stored is not None and stored.summary == "Hello from the stand-in."
    assert stored.summary_upto > 0
    bodies = [body for _, body in standin.requests]
    summaries = [b for b in bodies if "Update the summary" in b["messages"][-1]["content"]]
    assert summaries, "no summary was requested"
    # Incremental: a later summary request starts from the previous summary.
    assert "Summary so far:\n(none)" in summaries[0]["messages"][-1]["content"]
    assert len(summaries) >= 2
    assert "Summary so far:\nHello from the stand-in." in summaries[-1]["messages"][-1]["content"]
    chats = [b for b in bodies if "Update the summary" not in b["messages"][-1]["content"]]
    assert "Summary of the earlier conversation" in chats[-1]["messages"][0]["content"]
    assert "message 0 " not in str(chats[-1]["messages"])


async def test_stateless_turns_store_nothing(make_runtime: Any, standin: StandIn) -> None:
    runtime = await make_runtime(OPENAI, plugins=openai_table(standin))
    turn = await start_turn(runtime, ALICE, ChatRequest(
        "and now?", history=[ChatMessage("user", "before"), ChatMessage("assistant", "ok")],
        system_prompt="Custom system.", params=FAST))
    _, finished = await drain(turn)
    assert finished.status == "complete" and finished.message_id is None
    sent = standin.requests[-1][1]["messages"]
    assert sent[0] == {"role": "system", "content": "Custom system."}
    assert [m["content"] for m in sent[1:]] == ["before", "ok", "and now?"]
    async with runtime.db.session() as session:
        assert (await session.exec(select(Message))).all() == []


async def test_a_slash_command_is_answered_by_its_handler(
    make_runtime: Any, standin: StandIn
) -> None:
    recorder = Recorder()
    seen: list[tuple[str | None, bool]] = []

    async def shout(runtime: Runtime, principal: Principal, argument: str,
                    conversation_id: str | None) -> str:
        async with runtime.db.session() as session:
            stored = conversation_id is not None and (
                await session.get(Conversation, conversation_id)) is not None
        seen.append((conversation_id, stored))
        return f"{principal.owner}: {argument.upper()}"

    runtime = await make_runtime(OPENAI, plugin_object("recorder", recorder),
                                 command_plugin("shout", shout),
                                 plugins=openai_table(standin))
    turn = await start_turn(runtime, ALICE, ChatRequest("/shout hello there"))
    _, finished = await drain(turn)
    assert finished.text == "alice: HELLO THERE" and standin.requests == []
    stored = await rows(runtime, turn.conversation_id or "")
    assert [m.content for m in stored] == ["/shout hello there", "alice: HELLO THERE"]
    assert recorder.events == []
    # The handler got the new conversation, already committed; a stateless turn has none.
    await drain(await start_turn(runtime, ALICE, ChatRequest("/shout x", history=[])))
    assert seen == [(turn.conversation_id, True), (None, False)]
    # An unknown command goes to the model like any text.
    await drain(await start_turn(runtime, ALICE, ChatRequest("/unknown x", params=FAST)))
    assert len(standin.requests) == 1


async def test_concurrent_turns_in_one_conversation_each_get_their_own_seq(
    make_runtime: Any, standin: StandIn, database_url: str
) -> None:
    runtime = await make_runtime(OPENAI, database_url=database_url,
                                 plugins=openai_table(standin))
    first = await start_turn(runtime, ALICE, ChatRequest("one", params=FAST))
    await drain(first)

    async def turn(text: str) -> Finished:
        return (await drain(await start_turn(runtime, ALICE, ChatRequest(
            text, conversation_id=first.conversation_id, params=FAST))))[1]

    done = await asyncio.gather(turn("two"), turn("three"))
    assert [f.status for f in done] == ["complete", "complete"]
    stored = await rows(runtime, first.conversation_id or "")
    assert [m.seq for m in stored] == [1, 2, 3, 4, 5, 6]
    by_id = {m.id: m for m in stored}
    for message in stored:
        if message.role == "assistant":
            assert by_id[message.reply_to or ""].seq == message.seq - 1


async def test_a_duplicate_sent_concurrently_is_answered_once(
    make_runtime: Any, standin: StandIn, database_url: str
) -> None:
    recorder = Recorder()
    runtime = await make_runtime(OPENAI, plugin_object("recorder", recorder),
                                 database_url=database_url, plugins=openai_table(standin))
    request = ChatRequest("same", client_message_id="dup", params=FAST)

    async def send() -> Finished:
        return (await drain(await start_turn(runtime, ALICE, request)))[1]

    results = await asyncio.gather(send(), send(), return_exceptions=True)
    answered = [r for r in results if isinstance(r, Finished)]
    refused = [r for r in results if isinstance(r, Conflict)]
    # The second is refused while the first runs, or replayed if the first already ended.
    assert len(answered) + len(refused) == 2 and answered, results
    assert {f.message_id for f in answered} == {answered[0].message_id}
    assert all(r.status_code == 409 for r in refused)
    assert len(standin.requests) == 1  # generated once
    again = await start_turn(runtime, ALICE, request)
    assert again.replay is not None and again.message_id == answered[0].message_id
    stored = await rows(runtime, again.conversation_id or "")
    assert [(m.role, m.status) for m in stored] == [("user", "complete"),
                                                    ("assistant", "complete")]
    assert len(recorder.events) == 1


async def test_a_command_that_refuses_ends_the_turn_as_an_error(
    make_runtime: Any, standin: StandIn
) -> None:
    async def picky(runtime: Runtime, principal: Principal, argument: str,
                    conversation_id: str | None) -> str:
        raise BadRequest("say please")

    runtime = await make_runtime(OPENAI, command_plugin("picky", picky),
                                 plugins=openai_table(standin))
    turn = await start_turn(runtime, ALICE, ChatRequest("/picky now"))
    _, finished = await drain(turn)
    assert (finished.status, finished.error, finished.error_code) == ("error", "say please", 400)
    stored = await rows(runtime, turn.conversation_id or "")
    assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "error")]


class StepModel:
    """In-process and scripted: asks for ``lookup`` until the turn (after the last user
    message) has two tool steps, then answers."""

    name = "steps"
    context_window = 4096

    def supports(self, feature: str) -> bool:
        return feature == "tools"

    def count_tokens(self, text: str) -> int:
        return len(text) // 4 + 1

    async def stream(self, messages: Any, params: GenerationParams) -> AsyncIterator[Delta]:
        last_user = max(i for i, m in enumerate(messages) if m.role == "user")
        if params.tools and sum(1 for m in messages[last_user:] if m.tool_calls) < 2:
            yield Delta("", "tool_calls", tool_calls=(
                ToolCallDelta(0, None, "lookup", '{"q": "x"}'),))
            return
        for word in ("all", " done"):
            yield Delta(word)
        yield Delta("", "stop", 9, 2)

    async def aclose(self) -> None:
        pass


class StepPlugin:
    @hookimpl
    def register_llm_providers(self, register: Any, runtime: Any) -> None:
        register(StepModel())

    @hookimpl
    def register_tools(self, register: Any, runtime: Any) -> None:
        def lookup(q: str) -> str:
            """Look something up."""
            return f"found {q}"

        register(tool(lookup))


async def test_a_stored_turn_is_a_transaction_per_write_whatever_its_tool_steps(
    make_runtime: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn in a new conversation is two transactions (the user message with the
    answer's placeholder; the answer with its tool steps), a later turn of it four (its
    settings, then its history, are read first), however many tool steps it runs; none
    goes through an ORM session (on SQLite, one thread hop each)."""
    runtime = await make_runtime(plugin_object("steps", StepPlugin()),
                                 database_url=database_url)
    transactions: list[Any] = []
    sessions: list[Any] = []
    run, session = runtime.db.run, runtime.db.session

    def counted_run(work: Any) -> Any:
        transactions.append(work)
        return run(work)

    def counted_session() -> Any:
        sessions.append(1)
        return session()

    monkeypatch.setattr(runtime.db, "run", counted_run)
    monkeypatch.setattr(runtime.db, "session", counted_session)
    first = await start_turn(runtime, ALICE, ChatRequest("look it up", model="steps"))
    _, finished = await drain(first)
    assert finished.status == "complete" and finished.text == "all done"
    assert first.tool_steps == 2
    assert (len(transactions), len(sessions)) == (2, 0)
    later = await start_turn(runtime, ALICE, ChatRequest(
        "again", model="steps", conversation_id=first.conversation_id))
    _, finished = await drain(later)
    assert finished.status == "complete" and later.tool_steps == 2
    assert (len(transactions), len(sessions)) == (6, 0)
    monkeypatch.undo()
    stored = await rows(runtime, first.conversation_id or "")
    assert [(m.seq, m.role, m.status) for m in stored] == [
        (1, "user", "complete"), (2, "assistant", "complete"), (3, "tool", "complete"),
        (4, "assistant", "complete"), (5, "tool", "complete"), (6, "assistant", "complete"),
        (7, "user", "complete"), (8, "assistant", "complete"), (9, "tool", "complete"),
        (10, "assistant", "complete"), (11, "tool", "complete"),
        (12, "assistant", "complete")]
    assert stored[5].content == stored[11].content == "all done"
    assert stored[2].content == "found x" and stored[5].token_count == 2
