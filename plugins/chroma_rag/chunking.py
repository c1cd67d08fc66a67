"""Splitting a document into overlapping chunks measured in the embedder's tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document: ``text`` is ``document[start:end]``."""

    index: int
    text: str
    start: int
    end: int


def chunk_text(
    text: str,
    token_spans: Callable[[str], list[tuple[int, int]]],
    size: int,
    overlap: int,
) -> list[Chunk]:
    """Cut ``text`` into windows of ``size`` tokens, each sharing ``overlap`` tokens
    with the one before. Chunks are exact substrings of ``text`` (from the first token
    of a window to the end of its last), so nothing is rewritten. A text without
    tokens gives no chunks.
    """
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size (got {size}, {overlap})")
    spans = token_spans(text)
    chunks: list[Chunk] = []
    step = size - overlap
    for first in range(0, len(spans), step):
        window = spans[first : first + size]
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(len(chunks), text[start:end], start, end))
        if first + size >= len(spans):
            break
    return chunks
