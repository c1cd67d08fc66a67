"""Text embeddings shared by retrieval and memory: one embedder per process and spec.

The default is Chroma's own model, all-MiniLM-L6-v2 (ONNX), run with *dynamic*
padding: Chroma's ``DefaultEmbeddingFunction`` pads every input to 256 tokens, which
costs ~40x more for short texts and gives the same vectors (masked mean pooling).

Use :func:`get_embedder` with a spec: ``"minilm"`` (default) or a dotted path
``"package.module:factory"`` to a callable returning an :class:`Embedder`. numpy,
onnxruntime and tokenizers are imported only when a text is first embedded.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from core.errors import ConfigError, PluginUnavailable
from core.protocols import Check

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]
else:
    Vectors = Any

__all__ = ["DEFAULT_MODEL_DIR", "Embedder", "EmbeddingModelMissing", "MiniLMEmbedder",
           "aembed", "embedder_health", "get_embedder"]

log = logging.getLogger("mami.embeddings")
RETRY_DOWNLOAD = 60.0  # seconds between download attempts of a missing model


class EmbeddingModelMissing(PluginUnavailable):
    """503: the embedding model's files are missing (and could not be downloaded). The
    message is for users and names no server path; where the files go and why the
    download failed are logged, and shown by ``/health`` and ``mami doctor``."""

    code = "embedding_model_missing"

    def __init__(self) -> None:
        super().__init__("the embedding model is not installed on the server, so documents "
                         "and memories cannot be searched; an administrator can see the fix "
                         "in /health or with `mami doctor`")


def embedder_health(embedder: object) -> dict[str, Any]:
    """The ``health()`` report of a provider that embeds with ``embedder``: ``degraded``,
    with the reason and the exact fix, when its model files are missing."""
    check = getattr(embedder, "check", None)
    if check is None:
        return {"status": "ok"}
    result: Check = check()
    if result.status == "ok":
        return {"status": "ok", "embedding_model": result.detail}
    return {"status": "degraded", "reason": f"embedding model: {result.detail}; fix: {result.fix}"}

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "chroma" / "onnx_models" / "all-MiniLM-L6-v2" / "onnx"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length vectors.

    ``embed`` returns a float32 array of shape ``(len(texts), dim)``, each row with
    L2 norm 1, so a dot product is the cosine similarity. ``token_spans`` gives the
    ``(start, end)`` character offsets of the model's tokens in ``text`` (without
    special tokens); chunking uses it so a chunk never exceeds ``max_tokens``.
    ``id`` names the model (vectors of different ids are not comparable).
    """

    id: str
    dim: int
    max_tokens: int

    def embed(self, texts: Sequence[str]) -> Vectors: ...

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


async def aembed(embedder: Embedder, texts: Sequence[str]) -> Vectors:
    """``embedder.embed`` in a worker thread, so the event loop keeps serving."""
    return await asyncio.to_thread(embedder.embed, list(texts))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from Chroma's ONNX export, padded per batch, not to 256."""

    id = "all-MiniLM-L6-v2"
    dim = 384
    max_tokens = 256
    batch_size = 32

    def __init__(self, model_dir: str | Path = "") -> None:
        self.model_dir = Path(model_dir).expanduser() if model_dir else DEFAULT_MODEL_DIR
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None  # truncates to max_tokens, pads to the batch's longest
        self._splitter: Any = None  # plain: offsets for chunking
        self._failed_at: float | None = None  # last failed download (monotonic)

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            if not (self.model_dir / "model.onnx").exists():
                self._fetch_default_model()
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer_file = str(self.model_dir / "tokenizer.json")
            splitter = Tokenizer.from_file(tokenizer_file)
            splitter.no_truncation()
            splitter.no_padding()
            tokenizer = Tokenizer.from_file(tokenizer_file)
            tokenizer.enable_truncation(max_length=self.max_tokens)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Idle worker threads spin by default: twice the CPU per short text, and
            # slower when the cores are shared (bench/memory_dedup.py).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._splitter, self._tokenizer = splitter, tokenizer
            self._session = ort.InferenceSession(
                str(self.model_dir / "model.onnx"), sess_options=options,
                providers=["CPUExecutionProvider"],
            )

    def _fetch_default_model(self) -> None:
        """Let Chroma download its model (needs internet) when the files are missing; at
        most one attempt per :data:`RETRY_DOWNLOAD` seconds. Raises
        :class:`EmbeddingModelMissing` (details in the log, not in the message)."""
        if self.model_dir != DEFAULT_MODEL_DIR:
            log.error("embedding model not found: %s; %s", self.model_dir / "model.onnx",
                      self.check().fix)
            raise EmbeddingModelMissing()
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_DOWNLOAD:
            raise EmbeddingModelMissing()
        from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

        try:
            ONNXMiniLM_L6_V2()._download_model_if_not_exists()
        except Exception as exc:
            self._failed_at = time.monotonic()
            log.error("embedding model missing in %s and the download failed (%s: %s); %s",
                      self.model_dir, type(exc).__name__, exc, self.check().fix)
            raise EmbeddingModelMissing() from exc

    def check(self) -> Check:
        """Whether the model's files are where they are loaded from (for ``mami doctor``)."""
        needed = ("model.onnx", "tokenizer.json")
        missing = [name for name in needed if not (self.model_dir / name).is_file()]
        if not missing:
            return Check("embedding model", "ok", f"{self.id} in {self.model_dir}")
        fix = f"copy the files of {self.id}'s onnx/ folder into {self.model_dir}"
        if self.model_dir == DEFAULT_MODEL_DIR:
            fix += " (with internet access Chroma downloads them on first use)"
        return Check("embedding model", "fail",
                     f"{', '.join(missing)} missing in {self.model_dir}", fix)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        self._load()
        encoding = self._splitter.encode(text, add_special_tokens=False)
        return [(start, end) for start, end in encoding.offsets]

    def embed(self, texts: Sequence[str]) -> Vectors:
        import numpy as np

        self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Similar lengths per batch keep the padding small.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            out[batch] = self._forward([texts[i] for i in batch])
        return out

    def _forward(self, texts: list[str]) -> Vectors:
        import numpy as np

        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        hidden = self._session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        norms[norms == 0] = 1e-12
        return (pooled / norms).astype(np.float32)


_embedders: dict[tuple[str, str], Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(spec: str = "minilm", model_dir: str = "") -> Embedder:
    """The process-wide embedder for ``spec`` (created on first call, loaded lazily).

    ``spec`` is ``"minilm"`` or ``"module:callable"``; the callable is called with no
    arguments and must return an :class:`Embedder`. Raises :class:`ConfigError` for a
    spec that cannot be resolved.
    """
    key = (spec or "minilm", model_dir)
    with _embedders_lock:
        if key not in _embedders:
            _embedders[key] = _build(*key)
        return _embedders[key]


def _build(spec: str, model_dir: str) -> Embedder:
    if spec == "minilm":
        return MiniLMEmbedder(model_dir)
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        embedder = factory()
    except Exception as exc:
        raise ConfigError(f"embedder {spec!r}: cannot load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(embedder, Embedder):
        raise ConfigError(f"embedder {spec!r}: {type(embedder).__name__} is not an Embedder")
    return embedder
