"""The token budget: how a prompt is assembled inside the model's window (defect #6).

A prompt has sections: the system prompt, remembered facts, RAG passages, a running
summary of older turns (all four in one system message), the conversation history and
the latest user message; ``reply_tokens`` are reserved for the answer. Each optional
section has its own budget (``[budget]`` in plugins.toml). History is taken newest
first in whole turns (a user message with its answer) until the remaining room is
used; older turns are dropped, never cut. The system prompt and the latest user
message are always kept: when they alone do not fit, :class:`PayloadTooLarge` (413)
says so instead of silently cutting the message.

Token accounting (:func:`prompt_tokens`) is each message's tokens plus
``MESSAGE_OVERHEAD`` for its chat-template markers, plus ``PROMPT_OVERHEAD`` for the
start of the reply. Both are generous, so the real templated prompt stays inside the
window too.

Counting is bounded (:func:`bounded_count`): a text far longer than the room left for
it is judged by a prefix, so a multi-megabyte message costs what its first
``window * CHARS_PER_TOKEN`` characters cost. Counting calls the model's tokenizer,
which may be slow or block: callers on an event loop run these functions in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.config import BudgetSettings
from core.errors import PayloadTooLarge
from core.protocols import ChatMessage

MESSAGE_OVERHEAD = 8
PROMPT_OVERHEAD = 8
CHARS_PER_TOKEN = 16
"""More characters per token than any tokenizer averages over ordinary text: a text
longer than ``limit * CHARS_PER_TOKEN`` is first judged by a prefix of that length."""
SLICE_SLACK = 4
"""Tokens a cut between two slices of a text may add to their summed counts."""

Counter = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Turn:
    """Earlier messages that are kept or dropped together: a user message and its reply.
    ``last_seq`` is the stored sequence number of the turn's last message (0 if none)."""

    messages: tuple[ChatMessage, ...]
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class Context:
    """An assembled prompt. ``dropped`` are the history turns left out, oldest first;
    ``reply_tokens`` is what remains for the answer (at least the reserved budget)."""

    messages: list[ChatMessage]
    prompt_tokens: int
    reply_tokens: int
    dropped: list[Turn] = field(default_factory=list)
    used_memories: int = 0
    used_passages: int = 0
    used_summary: bool = False
    sources: tuple[Mapping[str, Any], ...] = ()
    """The sources of the passages used (set by :mod:`core.chat`), numbered as in the prompt."""


def message_tokens(message: ChatMessage, count: Counter) -> int:
    return count(message.content) + MESSAGE_OVERHEAD


def bounded_count(text: str, limit: int, count: Counter) -> tuple[int, bool]:
    """``(count(text), True)``; or, when the first ``limit * CHARS_PER_TOKEN`` characters
    of ``text`` already hold more than ``limit`` tokens, ``(a number over limit, False)``.

    The prefix is counted in slices, stopping as soon as their sum passes ``limit`` with
    a margin for the tokens a cut may add (``SLICE_SLACK`` per slice), so a text many
    times too long costs a few times ``limit`` tokens of counting. The whole text is
    counted only when it may fit, which for ordinary text means it is at most ``limit *
    CHARS_PER_TOKEN`` characters long."""
    limit = max(limit, 0)
    cap = (limit + 1) * CHARS_PER_TOKEN
    if len(text) > cap:
        step = (limit + 1) * 2
        total = 0
        for slices, start in enumerate(range(0, cap, step), 1):
            total += count(text[start:start + step])
            if total - slices * SLICE_SLACK > limit:
                return total - slices * SLICE_SLACK, False
    return count(text), True


def check_user_fits(
    *, system_prompt: str, user: str, count: Counter, window: int, budget: BudgetSettings,
) -> int:
    """The accounted tokens of the user message (with its overhead), after checking that
    the system prompt and the message leave room for the reserved reply; otherwise
    :class:`PayloadTooLarge`. Counts at most a bounded prefix of an oversized message."""
    reserve = max(1, budget.reply_tokens)
    limit = window - reserve
    base_room = limit - PROMPT_OVERHEAD - 2 * MESSAGE_OVERHEAD
    base, _ = bounded_count(system_text(system_prompt, (), (), ""), max(base_room, 0), count)
    if base > base_room:
        raise PayloadTooLarge(
            f"the system prompt alone is over {base_room} tokens, all the model's window of "
            f"{window} tokens leaves after {reserve} reserved for the reply; shorten it",
            param="messages", code="context_length_exceeded",
        )
    room = base_room - base
    tokens, whole = bounded_count(user, room, count)
    if tokens > room:
        size = f"{tokens} tokens" if whole else f"over {tokens} tokens ({len(user)} characters)"
        raise PayloadTooLarge(
            f"the message is {size} but the model's window of {window} tokens "
            f"leaves room for at most {room} (after the system prompt and "
            f"{reserve} tokens reserved for the reply); shorten it",
            param="messages", code="context_length_exceeded",
        )
    return tokens + MESSAGE_OVERHEAD


def prompt_tokens(messages: Sequence[ChatMessage], count: Counter) -> int:
    """The accounted size of a prompt: what :func:`build_context` keeps inside the window."""
    return sum(message_tokens(m, count) for m in messages) + PROMPT_OVERHEAD


def system_text(base: str, memories: Sequence[str], passages: Sequence[str], summary: str) -> str:
    """The system message: the persona, then any memories, passages and summary."""
    parts = [base.strip()] if base.strip() else []
    if memories:
        parts.append("Facts you remember about the user:\n" + "\n".join(f"- {m}" for m in memories))
    if passages:
        listed = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
        parts.append("Passages from the user's documents that may help:\n" + listed)
    if summary:
        parts.append("Summary of the earlier conversation:\n" + summary)
    return "\n\n".join(parts)


def _fit(items: Sequence[str], budget: int, count: Counter) -> list[str]:
    """The leading items whose tokens (plus a few for their separators) stay in budget."""
    kept: list[str] = []
    used = 0
    for item in items:
        cost = bounded_count(item, budget - used, count)[0] + 4
        if used + cost > budget:
            break
        kept.append(item)
        used += cost
    return kept


def build_context(
    *,
    system_prompt: str,
    user: str,
    history: Sequence[Turn],
    count: Counter,
    window: int,
    budget: BudgetSettings,
    memories: Sequence[str] = (),
    passages: Sequence[str] = (),
    summary: str = "",
) -> Context:
    """Assemble the prompt for ``user`` inside ``window`` tokens.

    ``history`` is oldest first; ``memories`` and ``passages`` best first. Raises
    :class:`PayloadTooLarge` when the system prompt and the user message alone leave
    no room for the reserved reply.
    """
    limit = window - max(1, budget.reply_tokens)
    user_msg = ChatMessage("user", user)
    user_cost = check_user_fits(system_prompt=system_prompt, user=user, count=count,
                                window=window, budget=budget)
    mems = _fit(memories, budget.memory_tokens, count)
    pas = _fit(passages, budget.rag_tokens, count)
    summ = summary if summary and bounded_count(
        summary, budget.summary_tokens, count)[0] <= budget.summary_tokens else ""
    system = ChatMessage("system", system_text(system_prompt, mems, pas, summ))
    while message_tokens(system, count) + user_cost + PROMPT_OVERHEAD > limit:
        # Separators can tokenize differently in context; shed optional parts until it fits.
        if pas:
            pas.pop()
        elif mems:
            mems.pop()
        else:
            summ = ""
        system = ChatMessage("system", system_text(system_prompt, mems, pas, summ))
    room = limit - message_tokens(system, count) - user_cost - PROMPT_OVERHEAD
    kept: list[Turn] = []
    for turn in reversed(history):
        cost = 0
        for m in turn.messages:
            cost += bounded_count(m.content, room - cost, count)[0] + MESSAGE_OVERHEAD
            if cost > room:
                break
        if cost > room:
            break
        kept.append(turn)
        room -= cost
    kept.reverse()
    dropped = list(history[: len(history) - len(kept)])
    messages = [system] + [m for turn in kept for m in turn.messages] + [user_msg]
    used = prompt_tokens(messages, count)
    return Context(
        messages=messages,
        prompt_tokens=used,
        reply_tokens=window - used,
        dropped=dropped,
        used_memories=len(mems),
        used_passages=len(pas),
        used_summary=bool(summ),
    )


def turns_from_messages(messages: Sequence[ChatMessage]) -> list[Turn]:
    """Group a flat history (as an OpenAI client sends it) into turns: each user message
    starts a new turn; assistant messages join the turn before them."""
    turns: list[list[ChatMessage]] = []
    for message in messages:
        if message.role == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return [Turn(tuple(t)) for t in turns]


def summary_prompt(summary: str, turns: Sequence[Turn], max_words: int) -> list[ChatMessage]:
    """The request that folds ``turns`` into the running ``summary`` (incrementally: only
    turns not yet covered are sent, together with the summary so far)."""
    lines = [f"{m.role}: {m.content}" for turn in turns for m in turn.messages]
    task = (
        f"Update the summary of a conversation. Keep every fact, name and decision; at most "
        f"{max_words} words; reply with the summary only.\n\n"
        f"Summary so far:\n{summary or '(none)'}\n\nNew messages:\n" + "\n".join(lines)
    )
    return [ChatMessage("system", "You write short, factual summaries."), ChatMessage("user", task)]
