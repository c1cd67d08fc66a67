"""Events that plugins may observe (see the ``message_completed`` and
``image_finished`` hooks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MessageCompleted:
    """An assistant message finished and was stored with status ``complete``."""

    owner: str
    conversation_id: str
    message_id: str
    user_message_id: str
    user_text: str
    assistant_text: str


@dataclass(frozen=True, slots=True)
class ImageFinished:
    """An image job reached a final state."""

    owner: str
    job_id: str
    state: str
    conversation_id: str | None = None
    placeholder_reason: str | None = None
    error: str | None = None
