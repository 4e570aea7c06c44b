"""The embedder interface, its errors, the cloud retry policy and the call-level vector.

Every :class:`Embedder` returns float32 arrays of shape ``(len(texts), dim)`` whose rows are
L2-normalised, so a dot product is the cosine similarity. Two input rules hold for every backend:

- an empty list gives an empty ``(0, dim)`` array without touching the model or the network;
- a blank string (empty or whitespace only) gives an all-zero row and is never sent to the model
  (OpenAI refuses empty inputs with a 400; a local model would return the vector of "nothing").
  A zero row is the one row that is not unit length: it means "no text", it adds nothing to
  :func:`call_vector`, and sinks should not index it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream_processor.models import cloud
from stream_processor.models.cloud import BackendError

log = logging.getLogger("stream_processor.models.embeddings")


# --- errors ------------------------------------------------------------------------------------


class EmbeddingError(RuntimeError):
    """Base class of every embedding error."""


class EmbeddingInputError(EmbeddingError, ValueError):
    """The texts (or vectors, weights) handed in cannot be used as they are; the message says why."""


class EmbeddingConfigError(EmbeddingError, ValueError):
    """An impossible configuration, e.g. a fallback whose vectors have another size."""


class EmbeddingBackendError(EmbeddingError, BackendError):
    """A backend failed. ``retryable`` tells whether trying again may help."""


class EmbeddingAuthError(EmbeddingBackendError):
    """The backend refused the credentials (401/403): never retried; fix the API key setting."""


class EmbeddingMalformedResponse(EmbeddingBackendError):
    """The backend answered 2xx with a body that is not the documented JSON (or vectors of the
    wrong count, size or value)."""


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embeddings:
    """Vectors plus where they came from (sinks store ``model`` next to the vector: vectors of two
    models are not comparable even when their sizes agree)."""

    vectors: np.ndarray  # float32 (n, dim), rows unit length (zero for blank texts)
    backend: str
    model: str
    fallback_from: str | None = None
    fallback_reason: str | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


# --- interface ---------------------------------------------------------------------------------


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or an :class:`EmbeddingInputError` saying which item is not a string."""
    if isinstance(texts, (str, bytes)):
        raise EmbeddingInputError("texts must be a list of strings, not a single "
                                  f"{type(texts).__name__} (wrap it: embed([text]))")
    try:
        items = list(texts)
    except TypeError:
        raise EmbeddingInputError(f"texts must be a list of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise EmbeddingInputError(f"texts[{i}] is {type(t).__name__}, not a string")
    return items


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class Embedder(ABC):
    """Text -> unit-length float32 vectors of a fixed size. Thread-safe ``embed``."""

    #: backend name used in results, logs and metric labels ("local", "openai")
    name: str = "?"
    #: model name stored next to the vectors
    model: str = "?"
    #: vector size, known before the first call (the Weaviate collection is created with it)
    dim: int = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 (len(texts), dim)``, L2-normalised rows; zero rows for blank texts."""
        return self.embed_result(texts).vectors

    def embed_result(self, texts: Sequence[str]) -> Embeddings:
        """Like :meth:`embed`, with the backend and model that produced the vectors."""
        items = check_texts(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        keep = [i for i, t in enumerate(items) if t.strip()]
        if keep:
            vectors = np.asarray(self._embed([items[i] for i in keep]))
            if vectors.shape != (len(keep), self.dim):
                raise EmbeddingBackendError(self.name, f"returned vectors of shape {vectors.shape}, "
                                            f"expected {(len(keep), self.dim)}")
            if not np.isfinite(vectors).all():
                raise EmbeddingBackendError(self.name, "returned NaN or infinite values")
            out[keep] = l2_normalise(vectors)
        return Embeddings(out, self.name, self.model)

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray:
        """Vectors of non-blank texts, ``(len(texts), dim)`` (normalised by the caller)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients and models."""


# --- retries (cloud backends) ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RetryPolicy(cloud.RetryPolicy):
    """:class:`stream_processor.models.cloud.RetryPolicy` logging as the embedder's."""

    label: str = "embedding"
    stage: str = "embedder"


# --- fallback ----------------------------------------------------------------------------------


class FallbackEmbedder(Embedder):
    """Ask ``primary`` (a cloud backend); when it fails with an :class:`EmbeddingBackendError`,
    ask ``fallback`` (the local model) and say so in the result.

    Refused at construction when the two vector sizes differ: one Weaviate collection holds one
    vector size, so a 512-d local vector cannot stand in for a 1536-d OpenAI one. Equal sizes
    (e.g. ``text-embedding-3-small`` with ``dimensions=512``) are accepted, but the two models'
    vectors still live in different spaces: the result's ``model`` tells sinks which one they got.
    """

    def __init__(self, primary: Embedder, fallback: Embedder) -> None:
        if primary.dim != fallback.dim:
            raise EmbeddingConfigError(
                f"fallback refused: {primary.name} ({primary.model}) makes {primary.dim}-d vectors, "
                f"{fallback.name} ({fallback.model}) {fallback.dim}-d; a collection holds one vector size. "
                f"Set LUPITA_EMBED_FALLBACK=none, or LUPITA_EMBED_OPENAI_DIMENSIONS={fallback.dim}")
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.model = primary.model
        self.dim = primary.dim

    def embed_result(self, texts: Sequence[str]) -> Embeddings:
        items = check_texts(texts)
        try:
            return self.primary.embed_result(items)
        except EmbeddingBackendError as exc:
            level = logging.ERROR if isinstance(exc, EmbeddingAuthError) else logging.WARNING
            log.log(level, "embedding backend failed, using the fallback", extra={
                "stage": "embedder", "backend": self.primary.name, "fallback": self.fallback.name,
                "status": exc.status, "error": type(exc).__name__, "reason": str(exc)})
            result = self.fallback.embed_result(items)
            return Embeddings(result.vectors, result.backend, result.model,
                              fallback_from=self.primary.name, fallback_reason=str(exc))

    def _embed(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - embed_result is overridden
        return self.embed_result(texts).vectors

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()


# --- call-level vector -------------------------------------------------------------------------


def call_vector(vectors: np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """One vector for a whole call: the L2-normalised mean of utterance vectors weighted by
    ``weights`` (their durations in seconds).

    Rows are normalised first, so a weight is exactly the share of one utterance; zero rows (blank
    texts) and zero weights add nothing. Raises :class:`EmbeddingInputError` on mismatched shapes,
    negative or non-finite weights, or when nothing is left to average (no text, or all weights 0).
    """
    v = np.asarray(vectors, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float64)
    if v.ndim != 2:
        raise EmbeddingInputError(f"vectors must be a 2-D array (n, dim), got shape {v.shape}")
    if w.ndim != 1 or w.shape[0] != v.shape[0]:
        raise EmbeddingInputError(f"weights must be a 1-D array of {v.shape[0]} values (one per vector), "
                                  f"got shape {w.shape}")
    if not np.isfinite(v).all():
        raise EmbeddingInputError("vectors contain NaN or infinite values")
    if not np.isfinite(w).all() or (w < 0).any():
        raise EmbeddingInputError("weights must be finite and >= 0 (durations in seconds)")
    total = (w[:, None] * l2_normalise(v).astype(np.float64)).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if norm <= 1e-12:
        raise EmbeddingInputError("nothing to average: no vector with text and a positive weight")
    return (total / norm).astype(np.float32)
