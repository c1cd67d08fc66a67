"""The dynamic-padding MiniLM embedder gives Chroma's own vectors, and chunking by its
tokens keeps every chunk within the window with the configured overlap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ConfigError
from plugins.chroma_rag.chunking import chunk_text
from plugins.chroma_rag.embeddings import (
    Embedder,
    EmbeddingModelMissing,
    MiniLMEmbedder,
    aembed,
    get_embedder,
)

TEXTS = [
    "hello",
    "What is the capital of France?",
    "Bananas are yellow; apples are red or green. " * 4,
    "Ünïcödé, 日本語のテキスト, emoji 🙂 and symbols ∑∫√",
    "# Title\n\n- a list item\n- another one\n\n```python\nprint('code')\n```",
    "a long document that goes past the model's window " * 40,  # > 256 tokens: truncated
]


def test_vectors_match_chromas_default_embedding_function() -> None:
    from chromadb.utils.embedding_functions import DefaultEmbeddingFunction

    ours = get_embedder().embed(TEXTS)
    reference = np.array(DefaultEmbeddingFunction()(TEXTS), dtype=np.float32)  # type: ignore[operator]
    assert ours.shape == (len(TEXTS), 384)
    cosines = (ours * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999, cosines
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


async def test_batching_does_not_change_a_vector() -> None:
    embedder = get_embedder()
    together = await aembed(embedder, TEXTS)
    alone = np.stack([embedder.embed([t])[0] for t in TEXTS])
    assert np.allclose(together, alone, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_get_embedder_is_shared_and_pluggable() -> None:
    assert get_embedder() is get_embedder("minilm")
    assert isinstance(get_embedder(), Embedder)
    plugged = get_embedder("plugins.chroma_rag.embeddings:MiniLMEmbedder")
    assert isinstance(plugged, MiniLMEmbedder) and plugged is not get_embedder()
    with pytest.raises(ConfigError, match="no_such_module"):
        get_embedder("no_such_module:factory")
    with pytest.raises(ConfigError, match="not an Embedder"):
        get_embedder("builtins:dict")


def test_missing_model_dir_is_a_503_without_the_path(tmp_path: object,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(EmbeddingModelMissing) as caught:
        MiniLMEmbedder(str(tmp_path)).embed(["x"])
    assert caught.value.status_code == 503 and str(tmp_path) not in caught.value.message
    assert f"{tmp_path}/model.onnx" in caplog.text  # the details are logged


@settings(max_examples=40, deadline=None)
@given(
    words=st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=300),
    size=st.integers(min_value=2, max_value=60),
    data=st.data(),
)
def test_chunks_are_windows_of_tokens_with_overlap(words: list[str], size: int,
                                                   data: st.DataObject) -> None:
    overlap = data.draw(st.integers(min_value=0, max_value=size - 1))
    text = " ".join(words)
    spans = get_embedder().token_spans
    chunks = chunk_text(text, spans, size, overlap)
    tokens = spans(text)
    if not tokens:
        assert chunks == []
        return
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert len(spans(chunk.text)) <= size + 2  # re-tokenising a cut may merge/split a little
    # every token is in some chunk, the first and last tokens included
    assert chunks[0].start == tokens[0][0] and chunks[-1].end == tokens[-1][1]
    step = size - overlap
    assert len(chunks) == max(1, -(-(len(tokens) - overlap) // step))
    starts = [tokens[i * step][0] for i in range(len(chunks))]
    assert [c.start for c in chunks] == starts
    assert [c.index for c in chunks] == list(range(len(chunks)))
