# ruff: noqa: RUF001, RUF002, RUF003  (Turkish letters and typographic quotes are intended)
"""Finding facts to remember in a completed exchange, and remembering them once.

Explicit requests are found with patterns, in English ("remember that ...", "don't
forget: ...", "... Remember this.") and Turkish ("hatırla ki ...", "şunu hatırla:
...", "..., bunu hatırla"). With ``llm_extraction`` on, the active LLM is also asked
for durable facts as JSON; output that is not such JSON is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from datetime import timedelta
from typing import Any

from core.chat import ready
from core.errors import BadRequest, ProviderError
from core.events import MessageCompleted
from core.protocols import ChatMessage, GenerationParams
from core.runtime import Runtime
from plugins.memory import Settings
from plugins.memory.normalize import normalize

log = logging.getLogger("mami.memory")

CONSUMER = "memory"
"""The ``claim_once`` consumer name: one receipt per assistant message id."""

_FLAGS = re.IGNORECASE  # with IGNORECASE, Python's re also equates ı/I/İ/i
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_LEADING = [
    re.compile(r"^(?:(?:please|ok|okay|hey|also|and)[,\s]+)*(?:(?:can|could|would|will) you\s+)?"
               r"(?:please\s+)?(?:remember|don'?t forget|do not forget|keep in mind)"
               r"(?:\s+that|\s*:)\s+"
               r"(?P<fact>.+)$", _FLAGS),
    re.compile(r"^(?:(?:l[üu]tfen|ayr[ıi]ca|bir de)[,\s]+)*(?:[şs]unu\s+)?(?:hat[ıi]rla|unutma)"
               r"(?:\s+ki|\s*:)\s+"
               r"(?P<fact>.+)$", _FLAGS),
]
_TRAILING = [
    re.compile(r"^(?P<fact>.+?)\s*[,;:\-–—]\s*(?:(?:please\s+)?remember(?: this| that)?"
               r"(?:,? please)?)\s*[.!]*$", _FLAGS),
    re.compile(r"^(?P<fact>.+?)(?:\s*[,;:\-–—]\s*|\s+(?=(?:[bş]unu|l[üu]tfen)\s))"
               r"(?:(?:[bşs]unu|l[üu]tfen)\s+)*(?:hat[ıi]rla(?:r\s*m[ıi]s[ıi]n|y[ıi]n)?|unutma"
               r"|akl[ıi]nda tut)"
               r"(?:\s+l[üu]tfen)?\s*[.!?]*$", _FLAGS),
]
_BARE = re.compile(
    r"^(?:please\s+)?(?:remember|don'?t forget) (?:this|that)(?:,? please)?\s*[.!]*$"
    r"|^(?:l[üu]tfen\s+)?(?:[bşs]unu\s+)?(?:hat[ıi]rla(?:r\s*m[ıi]s[ıi]n|y[ıi]n)?|unutma)"
    r"(?:\s+l[üu]tfen)?\s*[.!?]*$", _FLAGS)
_NOT_A_FACT = {"bunu", "şunu", "sunu", "beni", "onu", "this", "that", "it", "me"}


def explicit_facts(text: str) -> list[str]:
    """The facts the user explicitly asked to be remembered in ``text``, in order.

    A sentence that is only "Remember this." / "Bunu hatırla." refers to the sentence
    before it. Questions ("do you remember ...?") are not requests.
    """
    sentences = [s.strip() for s in _SENTENCES.split(text) if s.strip()]
    facts: list[str] = []
    for i, sentence in enumerate(sentences):
        found: str | None = None
        for pattern in (*_LEADING, *_TRAILING):
            match = pattern.match(sentence)
            if match:
                found = match["fact"]
                break
        if found is None and i > 0 and _BARE.match(sentence):
            found = sentences[i - 1]
        fact = _tidy(found or "")
        if fact and normalize(fact) not in _NOT_A_FACT:
            facts.append(fact)
    return facts


def _tidy(fact: str) -> str:
    return fact.strip().strip("\"'“”‘’«»").strip().rstrip(".!?,;: ").strip()


EXTRACTION_PROMPT = """\
You extract durable facts about the user from one chat exchange, for a long-term memory.
A fact is one short sentence about the user: name, family, pets, home, work, health,
preferences, plans, or instructions on how to answer them. Write each fact in the
user's language, in the first person as the user would ("My cat is called Pamuk").
Leave out questions, small talk, facts about the assistant and anything temporary.
Reply with JSON only, exactly like {"facts": ["..."]}; use {"facts": []} when there
is nothing durable."""


def parse_facts(output: str) -> list[str] | None:
    """The facts in an LLM's reply: a JSON object ``{"facts": [str, ...]}`` or a JSON
    list of strings, possibly inside a Markdown code fence or after some prose.
    ``None`` when there is no such JSON (the caller logs and skips it)."""
    start = min((i for i in (output.find("{"), output.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _end = json.JSONDecoder().raw_decode(output[start:])
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("facts")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return [fact for fact in (_tidy(item) for item in value) if fact]


async def llm_facts(event: MessageCompleted, runtime: Runtime, settings: Settings) -> list[str]:
    """Durable facts the active LLM finds in the exchange; [] when it fails or its
    output is malformed (logged, never raised)."""
    provider = runtime.llm
    if provider is None:
        return []
    messages = [
        ChatMessage("system", EXTRACTION_PROMPT),
        ChatMessage("user", f"User: {event.user_text}\n\nAssistant: {event.assistant_text}"),
    ]
    params = GenerationParams(max_tokens=settings.extraction_max_tokens, temperature=0.0)
    pieces: list[str] = []
    try:
        await ready(provider)
        deltas: Any = provider.stream(messages, params)
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                pieces.append(delta.text)
    except ProviderError as exc:
        log.warning("memory extraction for message %s failed: %s", event.message_id, exc)
        return []
    output = "".join(pieces)
    facts = parse_facts(output)
    if facts is None:
        log.warning("memory extraction for message %s: not a JSON list of facts, skipped: %.200r",
                    event.message_id, output)
        return []
    return facts


PENDING = "memory.retry"
"""The ``claim_once`` consumer of the messages whose remembering failed after the claim
(Chroma or the database down): a durable "retry this" marker, kept until the message is
handled, so a failure loses no fact even when no one delivers the event again."""


async def remember_from(event: MessageCompleted, runtime: Runtime, settings: Settings) -> None:
    """Remember the facts of one completed exchange, exactly once per assistant message.

    The facts are found first; only then is the message claimed (``claim_once``), so
    a message with nothing to remember costs no write, and a second delivery, a retry
    or a racing worker finds the claim taken and does nothing. When remembering fails
    after the claim (Chroma or the database down), the message is marked for retry
    (:data:`PENDING`), the claim released and the error raised: the next delivery, the
    retry loop of a long-running server (:func:`start_retrying`) or the next start
    tries again; facts that this message already stored before the failure are not
    counted twice.
    """
    await _remember_once(event, runtime, settings)


async def _remember_once(event: MessageCompleted, runtime: Runtime, settings: Settings) -> str:
    """:func:`remember_from`, saying what happened: ``nothing`` (no fact to remember),
    ``taken`` (the message was claimed before) or ``done``."""
    store = runtime.memory
    if store is None:
        return "nothing"
    facts = explicit_facts(event.user_text)
    if settings.llm_extraction:
        facts += await llm_facts(event, runtime, settings)
    unique: dict[str, str] = {}
    for fact in facts:
        unique.setdefault(normalize(fact), fact)
    unique.pop("", None)
    chosen = list(unique.values())[: settings.max_facts]
    if not chosen:
        return "nothing"
    if not await runtime.claim_once(CONSUMER, event.message_id):
        return "taken"
    try:
        decided = getattr(store, "decided", None)
        done = await decided(event.owner, event.message_id) if decided is not None else set()
        for fact in chosen:
            if fact in done:
                continue
            try:
                decision = await store.remember(event.owner, fact, event.message_id)
            except BadRequest as exc:
                log.info("not remembering %.80r: %s", fact, exc.message)
                continue
            log.info("memory %s %s for %s", decision.action, decision.memory_id, event.owner)
    except BaseException:
        # The marker first, then the release: at every moment the claim or the marker
        # holds the message, so a process dying in between loses nothing.
        marked = await _quietly(runtime.claim_once(PENDING, event.message_id))
        await _quietly(runtime.release_claim(CONSUMER, event.message_id))
        if marked is not None and not runtime.serverless:
            start_retrying(runtime, settings)
        raise
    return "done"


async def _quietly(work: Any) -> Any:
    """``work``'s result, shielded from cancellation; ``None`` when it fails."""
    try:
        return await asyncio.shield(work)
    except Exception:
        return None


RECENT = timedelta(days=1)
"""How far back the start-up looks for claims a killed process did not finish."""
CLAIM_GRACE = timedelta(minutes=5)
"""With a Chroma server (several processes), how old an unfinished claim must be
before it counts as abandoned."""
REDELIVER_MAX = 50
"""Most messages redelivered at one start."""


async def redeliver_unfinished(runtime: Runtime, settings: Settings) -> int:
    """At start-up: messages whose claim was taken in the last day by a process that
    stopped before remembering anything (no decision has them as source) are handled
    again; returns how many. With an embedded Chroma (one process) every such claim is
    abandoned; with a server only those older than :data:`CLAIM_GRACE`. A message whose
    facts were all refused is looked at again at each start for a day."""
    from sqlmodel import col, select

    from core.models import EventReceipt, utcnow
    from plugins.memory.models import MemoryDecisionRecord

    store = runtime.memory
    if store is None:
        return 0
    now = utcnow()
    embedded = not getattr(store, "location", "").startswith(("http://", "https://"))
    newest = now if embedded else now - CLAIM_GRACE
    async with runtime.db.session() as session:
        keys = [key for key, created in (await session.exec(
            select(EventReceipt.key, EventReceipt.created_at).where(
                col(EventReceipt.consumer) == CONSUMER,
                col(EventReceipt.created_at) >= now - RECENT))).all()
            if _aware(created) <= newest]
        if not keys:
            return 0
        decided = set((await session.exec(select(MemoryDecisionRecord.source_message_id).where(
            col(MemoryDecisionRecord.source_message_id).in_(keys)))).all())
        events = await _events(session, [k for k in keys if k not in decided][:REDELIVER_MAX])
    for event in events:
        await runtime.release_claim(CONSUMER, event.message_id)
        await remember_from(event, runtime, settings)
    if events:
        log.warning("remembered the facts of %d message(s) a stopped process had claimed",
                    len(events))
    return len(events)


async def _events(session: Any, keys: list[str]) -> list[MessageCompleted]:
    """The ``message_completed`` events of the complete assistant messages ``keys``."""
    from core.models import Conversation, Message

    events = []
    for key in keys:
        answer = await session.get(Message, key)
        if answer is None or answer.status != "complete" or answer.reply_to is None:
            continue
        asked = await session.get(Message, answer.reply_to)
        conversation = await session.get(Conversation, answer.conversation_id)
        if asked is None or conversation is None:
            continue
        events.append(MessageCompleted(conversation.owner_id, conversation.id, key,
                                       asked.id, asked.content, answer.content))
    return events


RETRY_EVERY = 30.0
"""Seconds between retry passes while messages wait (:func:`start_retrying`); each
failed pass doubles the pause, up to :data:`RETRY_MAX`."""
RETRY_MAX = 600.0
RETRY_GIVE_UP = timedelta(days=1)
"""A message whose remembering has failed for this long is given up (logged)."""
STATE = "memory.retrier"
START_WAIT = 10.0
"""Seconds a server's start waits for the start-up pass (then it goes on in the
background, so a slow model or a store still down never holds the start for long)."""


async def retry_pending(runtime: Runtime, settings: Settings) -> tuple[int, bool]:
    """One pass over the messages marked :data:`PENDING`, oldest first, at most
    :data:`REDELIVER_MAX`: each is remembered (exactly once: the claim still guards it)
    and its marker dropped. The pass stops at the first failure (the store is still
    down: the others would fail too). Returns ``(markers left, whether one failed)``.

    A marker whose message another delivery claimed meanwhile is dropped once that
    delivery has decided something (until then it is kept: that delivery may fail)."""
    from sqlmodel import col, func, select

    from core.models import EventReceipt, utcnow
    from plugins.memory.models import MemoryDecisionRecord

    async with runtime.db.session() as session:
        marked = list((await session.exec(
            select(EventReceipt.key, EventReceipt.created_at)
            .where(col(EventReceipt.consumer) == PENDING)
            .order_by(col(EventReceipt.created_at)).limit(REDELIVER_MAX))).all())
        events = {e.message_id: e for e in await _events(session, [k for k, _ in marked])}
    failed = False
    retried = remembered = 0
    for key, created in marked:
        event = events.get(key)
        if event is None:  # the message was deleted (or never completed)
            await runtime.release_claim(PENDING, key)
            continue
        retried += 1
        try:
            outcome = await _remember_once(event, runtime, settings)
        except Exception as exc:
            if utcnow() - _aware(created) > RETRY_GIVE_UP:
                log.error("gave up remembering the facts of message %s (failing since %s): %s",
                          key, created, exc)
                await runtime.release_claim(PENDING, key)
            else:
                log.warning("remembering the facts of message %s failed again, will retry: %s",
                            key, exc)
                failed = True
                break
            continue
        if outcome == "taken":
            async with runtime.db.session() as session:
                decided = (await session.exec(select(func.count()).select_from(
                    MemoryDecisionRecord).where(
                        col(MemoryDecisionRecord.source_message_id) == key))).one()
            if not decided and utcnow() - _aware(created) <= RETRY_GIVE_UP:
                continue
        else:
            remembered += outcome == "done"
        await runtime.release_claim(PENDING, key)
    async with runtime.db.session() as session:
        left = (await session.exec(select(func.count()).select_from(EventReceipt).where(
            col(EventReceipt.consumer) == PENDING))).one()
    if retried:
        log.warning("retried remembering %d message(s) whose memory write had failed: %d "
                    "remembered, %d still waiting", retried, remembered, left)
    return int(left), failed


class Retrier:
    """The background retries of one runtime: a task that runs :func:`retry_pending`
    every :data:`RETRY_EVERY` seconds (doubling after a failed pass) while markers are
    left, and ends when none is."""

    def __init__(self, runtime: Runtime, settings: Settings) -> None:
        self.runtime, self.settings = runtime, settings
        self.wanted = False
        self.closed = False  # the app stops: a failure now waits for the next start
        self.task: asyncio.Task[None] | None = None
        self.passed = asyncio.Event()
        """Set after the first pass (the start-up's, with ``at_start``)."""

    def want(self, at_start: bool = False) -> None:
        """Run passes until no marker is left; ``at_start``: first the start-up's
        :func:`redeliver_unfinished` and a pass at once."""
        self.wanted = True  # seen by a running pass: it looks again instead of ending
        if self.closed:
            return
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(at_start))

    async def _run(self, at_start: bool) -> None:
        pause = RETRY_EVERY
        if at_start:
            pause = 0.0
            try:
                await redeliver_unfinished(self.runtime, self.settings)
            except Exception as exc:  # the pass below and the next start try again
                log.warning("redelivering claimed messages failed: %s", exc)
        while True:
            await asyncio.sleep(pause)
            self.wanted = False
            try:
                left, failed = await retry_pending(self.runtime, self.settings)
            except Exception as exc:  # the database is down: markers are safe in it
                log.warning("retrying failed memory writes failed: %s", exc)
                left, failed = 1, True
            self.passed.set()
            if not left and not self.wanted:
                return
            pause = min(pause * 2, RETRY_MAX) if failed else RETRY_EVERY

    async def stop(self) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def start_retrying(runtime: Runtime, settings: Settings, at_start: bool = False) -> None:
    """Make sure the runtime's :class:`Retrier` runs (a long-running server only: on
    AWS Lambda nothing may run after a response, and the next start retries)."""
    retrier = runtime.state.get(STATE)
    if retrier is None:
        retrier = runtime.state[STATE] = Retrier(runtime, settings)
    retrier.want(at_start)


def _aware(moment: Any) -> Any:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
