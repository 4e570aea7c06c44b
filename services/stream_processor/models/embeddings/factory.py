"""Builds the configured embedder (and the cloud -> local fallback when the sizes agree)."""

from __future__ import annotations

from stream_processor.models.embeddings.base import Embedder, FallbackEmbedder, RetryPolicy
from stream_processor.models.embeddings.settings import EmbedSettings


def retry_policy(s: EmbedSettings) -> RetryPolicy:
    """``LUPITA_EMBED_MAX_ATTEMPTS``, ``_BACKOFF_SECONDS``, ``_MAX_BACKOFF_SECONDS``, ``_MAX_RETRY_AFTER_SECONDS``."""
    return RetryPolicy.from_settings(s, "embed")


def build_local(s: EmbedSettings) -> Embedder:
    from stream_processor.models.embeddings.local_use import LocalUSEEmbedder

    return LocalUSEEmbedder(threads=s.embed_threads)


def build_openai(s: EmbedSettings, *, retry: RetryPolicy | None = None) -> Embedder:
    from stream_processor.models.embeddings.openai_backend import OpenAIEmbedder

    return OpenAIEmbedder(api_key=s.embed_openai_api_key, base_url=s.embed_openai_base_url or None,
                          model=s.embed_openai_model, dimensions=s.embed_openai_dimensions,
                          encoding_format=s.embed_openai_encoding, batch_size=s.embed_openai_batch_size,
                          timeout_s=s.embed_timeout_seconds, retry=retry or retry_policy(s))


def build_embedder(s: EmbedSettings, *, local: Embedder | None = None, retry: RetryPolicy | None = None) -> Embedder:
    """The embedder ``s.embed_backend`` names; OpenAI wrapped in :class:`FallbackEmbedder` when
    ``s.embed_fallback == "local"`` (the settings already refused that for different vector sizes).
    ``local`` reuses an already loaded local model; otherwise it is loaded here, at start-up."""
    if s.embed_backend == "local":
        return local or build_local(s)
    cloud = build_openai(s, retry=retry)
    if s.embed_fallback == "local":
        return FallbackEmbedder(cloud, local or build_local(s))
    return cloud
