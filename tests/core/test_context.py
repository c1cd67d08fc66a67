"""The token budget: whole turns, kept sections, 413, never over the window."""

from __future__ import annotations

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
    prompt_tokens,
    summary_prompt,
    turns_from_messages,
)
from core.errors import PayloadTooLarge
from core.protocols import ChatMessage


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
