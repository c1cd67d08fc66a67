"""Splitting a document into overlapping chunks measured in the embedder's tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise


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


def chunk_pages(
    text: str,
    pages: Sequence[int],
    token_spans: Callable[[str], list[tuple[int, int]]],
    size: int,
    overlap: int,
) -> list[Chunk]:
    """:func:`chunk_text` page by page (``pages``: where each page starts in ``text``),
    so no chunk spans two pages and each can cite the one it is on. Indexes and offsets
    are the whole document's."""
    bounds = [*pages, len(text)]
    chunks: list[Chunk] = []
    for start, end in pairwise(bounds):
        for piece in chunk_text(text[start:end], token_spans, size, overlap):
            chunks.append(Chunk(len(chunks), piece.text, start + piece.start, start + piece.end))
    return chunks
