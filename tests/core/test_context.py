"""The token budget: whole turns, kept sections, 413, never over the window."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import BudgetSettings
from core.context import (
    CHARS_PER_TOKEN,
    Turn,
    bounded_count,
    build_context,
    cap_tool_result,
    prompt_tokens,
    summary_prompt,
    turns_from_messages,
)
from core.errors import PayloadTooLarge
from core.protocols import ChatMessage, ToolCall


def words(text: str) -> int:
    """A simple deterministic tokenizer: one token per 4 characters of each word."""
    return sum(math.ceil(len(w) / 4) for w in text.split())


def turn(i: int, size: int = 10) -> Turn:
    return Turn((ChatMessage("user", f"question {i} " + "q " * size),
                 ChatMessage("assistant", f"answer {i} " + "a " * size)), last_seq=2 * i)


def test_everything_fits_when_the_window_is_large() -> None:
    history = [turn(i) for i in range(3)]
    ctx = build_context(system_prompt="Be brief.", user="hello", history=history, count=words,
                        window=4096, budget=BudgetSettings(), memories=["likes tea"],
                        passages=["Paris is in France"], summary="earlier: greetings")
    assert ctx.messages[0].role == "system" and ctx.messages[-1] == ChatMessage("user", "hello")
    assert "likes tea" in ctx.messages[0].content
    assert "Paris is in France" in ctx.messages[0].content
    assert "earlier: greetings" in ctx.messages[0].content
    assert ctx.messages[1:-1] == [m for t in history for m in t.messages]
    assert ctx.dropped == []
    assert ctx.prompt_tokens == prompt_tokens(ctx.messages, words)


def test_oldest_whole_turns_are_dropped_first() -> None:
    history = [turn(i) for i in range(10)]
    one = sum(words(m.content) + 8 for m in history[0].messages)
    budget = BudgetSettings(reply_tokens=50)
    base = prompt_tokens([ChatMessage("system", "S"), ChatMessage("user", "hi")], words)
    ctx = build_context(system_prompt="S", user="hi", history=history, count=words,
                        window=base + 50 + 3 * one + 1, budget=budget)
    assert ctx.messages[1:-1] == [m for t in history[7:] for m in t.messages]
    assert ctx.dropped == history[:7]
    assert ctx.prompt_tokens + 50 <= base + 50 + 3 * one + 1


def test_a_turn_that_does_not_fit_stops_older_ones_too() -> None:
    big = Turn((ChatMessage("user", "x " * 400), ChatMessage("assistant", "y")), 2)
    history = [turn(0), big, turn(2)]
    ctx = build_context(system_prompt="S", user="hi", history=history, count=words,
                        window=400, budget=BudgetSettings(reply_tokens=100))
    assert ctx.messages[1:-1] == list(turn(2).messages)
    assert ctx.dropped == [turn(0), big]


def test_a_message_too_large_for_the_window_is_a_413_naming_the_sizes() -> None:
    with pytest.raises(PayloadTooLarge) as err:
        build_context(system_prompt="S", user="word " * 1000, history=[], count=words,
                      window=600, budget=BudgetSettings(reply_tokens=100))
    assert err.value.status_code == 413
    assert "1000 tokens" in err.value.message and "600" in err.value.message


def test_sections_respect_their_own_budgets() -> None:
    memories = [f"memory number {i} " + "m " * 20 for i in range(20)]
    passages = [f"passage number {i} " + "p " * 50 for i in range(20)]
    budget = BudgetSettings(memory_tokens=60, rag_tokens=120, summary_tokens=5)
    ctx = build_context(system_prompt="S", user="hi", history=[], count=words, window=8192,
                        budget=budget, memories=memories, passages=passages,
                        summary="a summary much longer than five tokens of budget, surely")
    assert 0 < ctx.used_memories < 20 and 0 < ctx.used_passages < 20
    kept_m = memories[: ctx.used_memories]
    assert sum(words(m) + 4 for m in kept_m) <= 60
    assert sum(words(p) + 4 for p in passages[: ctx.used_passages]) <= 120
    assert not ctx.used_summary and "a summary" not in ctx.messages[0].content
    assert memories[0] in ctx.messages[0].content and memories[-1] not in ctx.messages[0].content


def test_optional_sections_give_way_to_the_user_message() -> None:
    ctx = build_context(system_prompt="S", user="u " * 150, history=[], count=words,
                        window=300, budget=BudgetSettings(reply_tokens=100, memory_tokens=500),
                        memories=["fact " * 30, "fact " * 30])
    assert ctx.messages[-1].content == "u " * 150
    assert ctx.prompt_tokens + 100 <= 300


def test_turns_from_a_flat_history() -> None:
    flat = [ChatMessage("assistant", "welcome"), ChatMessage("user", "a"),
            ChatMessage("assistant", "b"), ChatMessage("user", "c")]
    turns = turns_from_messages(flat)
    assert [len(t.messages) for t in turns] == [1, 2, 1]


def test_summary_prompt_carries_the_old_summary_and_only_new_turns() -> None:
    prompt = summary_prompt("Alice likes tea.", [turn(5)], 50)
    assert "Alice likes tea." in prompt[-1].content and "question 5" in prompt[-1].content
    assert "question 4" not in prompt[-1].content


text = st.text(alphabet=st.sampled_from("abc xyz.\n"), max_size=300)
message_turn = st.builds(
    lambda u, a, n: Turn((ChatMessage("user", u), ChatMessage("assistant", a)), n),
    text, text, st.integers(1, 1000),
)


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(message_turn, max_size=25),
    system=text,
    user=text,
    memories=st.lists(text, max_size=8),
    passages=st.lists(text, max_size=8),
    summary=text,
    window=st.integers(16, 3000),
    reply=st.integers(1, 1000),
    memory_tokens=st.integers(0, 500),
    rag_tokens=st.integers(0, 800),
    summary_tokens=st.integers(0, 300),
)
def test_property_the_prompt_never_exceeds_the_window(
    history: list[Turn], system: str, user: str, memories: list[str], passages: list[str],
    summary: str, window: int, reply: int, memory_tokens: int, rag_tokens: int,
    summary_tokens: int,
) -> None:
    budget = BudgetSettings(reply_tokens=reply, memory_tokens=memory_tokens,
                            rag_tokens=rag_tokens, summary_tokens=summary_tokens)
    try:
        ctx = build_context(system_prompt=system, user=user, history=history, count=words,
                            window=window, budget=budget, memories=memories,
                            passages=passages, summary=summary)
    except PayloadTooLarge:
        alone = prompt_tokens([ChatMessage("system", system.strip()), ChatMessage("user", user)],
                              words)
        assert alone + reply > window
        return
    # Never over the window, with the reply's reserve intact.
    assert prompt_tokens(ctx.messages, words) == ctx.prompt_tokens
    assert ctx.prompt_tokens + reply <= window
    assert ctx.reply_tokens == window - ctx.prompt_tokens >= reply
    # The system prompt and the latest user message are always there, uncut.
    assert ctx.messages[0].role == "system" and ctx.messages[0].content.startswith(system.strip())
    assert ctx.messages[-1] == ChatMessage("user", user)
    # History is a suffix of whole turns; dropped turns are exactly the prefix before it.
    kept = ctx.messages[1:-1]
    n = len(history) - len(ctx.dropped)
    assert ctx.dropped == history[: len(ctx.dropped)]
    assert kept == [m for t in history[len(history) - n:] for m in t.messages]


class Tally:
    """A counter that remembers how many characters it was given."""

    def __init__(self, chars_per_token: int = 4) -> None:
        self.chars_per_token = chars_per_token
        self.seen = 0

    def __call__(self, text: str) -> int:
        self.seen += len(text)
        return math.ceil(len(text) / self.chars_per_token)


def test_a_text_far_over_the_limit_is_judged_by_a_short_prefix() -> None:
    tally = Tally()
    tokens, whole = bounded_count("abcd" * 1_000_000, 1000, tally)
    assert not whole and tokens > 1000
    assert tally.seen <= 1001 * CHARS_PER_TOKEN  # not the 4 MB


def test_a_text_that_may_fit_is_counted_exactly() -> None:
    assert bounded_count("abcd" * 1001, 1000, Tally()) == (1001, True)
    assert bounded_count("abcd" * 999, 1000, Tally()) == (999, True)
    # Text with unusually many characters per token is never refused by its prefix.
    sparse = Tally(chars_per_token=100)
    assert bounded_count("a" * 50_000, 1000, sparse) == (500, True)


def test_a_long_message_is_a_413_naming_its_size_without_a_full_count() -> None:
    tally = Tally()
    with pytest.raises(PayloadTooLarge) as err:
        build_context(system_prompt="S", user="abcd" * 2_000_000, history=[], count=tally,
                      window=2048, budget=BudgetSettings(reply_tokens=100))
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    assert "8000000 characters" in err.value.message
    assert tally.seen <= 2049 * CHARS_PER_TOKEN


# Tool steps: an assistant's calls and their results belong to the turn before them.

def call(turn_no: int, i: int) -> ToolCall:
    return ToolCall(f"call_{turn_no}_{i}", "lookup", json.dumps({"q": str(i)}))


def tool_turn(n: int, u: str, results: list[str], answer: str) -> Turn:
    calls = tuple(call(n, i) for i in range(len(results)))
    steps: tuple[ChatMessage, ...] = ()
    if calls:
        steps = (ChatMessage("assistant", "", tool_calls=calls),
                 *(ChatMessage("tool", r, tool_call_id=c.id) for c, r in zip(calls, results,
                                                                         strict=True)))
    return Turn((ChatMessage("user", u), *steps, ChatMessage("assistant", answer)), n)


big_text = st.text(alphabet=st.sampled_from("abcd efgh.\n"), max_size=3000)
any_turn = st.one_of(message_turn, st.builds(tool_turn, st.integers(1, 1000), text,
                                             st.lists(big_text, max_size=3), text))


def same_step(kept: ChatMessage, original: ChatMessage) -> bool:
    """``kept`` is ``original``, or, for a tool result, its prefix ended by the marker."""
    if kept.role != "tool" or kept.content == original.content:
        return kept == original
    body, marker, rest = kept.content.partition("[truncated by mami: ")
    return (kept.tool_call_id == original.tool_call_id and marker != ""
            and original.content.startswith(body.removesuffix("\n"))
            and rest.endswith(f" of {len(original.content)} characters shown]"))


def check_pairs(messages: list[ChatMessage]) -> None:
    """Every call is followed by exactly its results, and every result follows its call."""
    waiting: list[str] = []
    for m in messages:
        if m.role == "tool":
            assert waiting and m.tool_call_id == waiting.pop(0)
            continue
        assert not waiting
        waiting = [c.id for c in m.tool_calls]
    assert not waiting


@settings(max_examples=300, deadline=None)
@given(
    history=st.lists(any_turn, max_size=12),
    system=text,
    user=text,
    tail_results=st.lists(big_text, max_size=3),
    window=st.integers(16, 3000),
    reply=st.integers(1, 1000),
    tool_result_tokens=st.integers(0, 600),
)
def test_property_tool_steps_stay_whole_and_inside_the_window(
    history: list[Turn], system: str, user: str, tail_results: list[str], window: int,
    reply: int, tool_result_tokens: int,
) -> None:
    budget = BudgetSettings(reply_tokens=reply, tool_result_tokens=tool_result_tokens)
    tail = list(tool_turn(0, user, tail_results, "").messages[1:-1])
    try:
        ctx = build_context(system_prompt=system, user=user, history=history, count=words,
                            window=window, budget=budget, tail=tail)
    except PayloadTooLarge:
        # Refused only when even results cut to their bare marker leave no room.
        least = [ChatMessage("system", system.strip()), ChatMessage("user", user)] + [
            ChatMessage("tool", cap_tool_result(m.content, 0, words),
                        tool_call_id=m.tool_call_id) if m.role == "tool" else m for m in tail]
        assert prompt_tokens(least, words) + reply > window
        return
    assert prompt_tokens(ctx.messages, words) == ctx.prompt_tokens
    assert ctx.prompt_tokens + reply <= window
    check_pairs(ctx.messages)
    # The running turn's steps are all there (results possibly cut, never dropped).
    user_at = len(ctx.messages) - len(tail) - 1
    assert ctx.messages[user_at] == ChatMessage("user", user)
    assert all(same_step(k, o) for k, o in zip(ctx.messages[user_at + 1:], tail, strict=True))
    # History: a suffix of whole turns, each result at most tool_result_tokens (or just
    # its marker when even that is more).
    kept = ctx.messages[1:user_at]
    assert ctx.dropped == history[: len(ctx.dropped)]
    originals = [m for t in history[len(ctx.dropped):] for m in t.messages]
    assert len(kept) == len(originals)
    for k, o in zip(kept, originals, strict=True):
        assert same_step(k, o)
        if k.role == "tool" and k.content != o.content:
            assert words(o.content) > tool_result_tokens
            assert words(k.content) <= max(tool_result_tokens,
                                           words(cap_tool_result(o.content, 0, words)))


def test_a_huge_tool_result_is_cut_with_a_marker_not_dropped() -> None:
    result = "word " * 50_000
    tail = [ChatMessage("assistant", "", tool_calls=(call(1, 0),)),
            ChatMessage("tool", result, tool_call_id="call_1_0")]
    ctx = build_context(system_prompt="S", user="go", history=[], count=words, window=2048,
                        budget=BudgetSettings(reply_tokens=100, tool_result_tokens=300),
                        tail=tail)
    kept = ctx.messages[-1]
    assert kept.tool_call_id == "call_1_0" and result.startswith(kept.content.split("\n[")[0])
    assert kept.content.endswith(f" of {len(result)} characters shown]")
    assert 200 < words(kept.content) <= 300
