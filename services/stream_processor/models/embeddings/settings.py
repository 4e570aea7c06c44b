"""Settings of the embedder (env prefix ``LUPITA_``, frozen).

A mixin-ready :class:`EmbedSettings` deriving from :class:`lupita.config.CommonSettings`: the
stream-processor's settings class can inherit from it next to ``AsrSettings`` so the worker keeps
one settings object; tests and ``bench/embed.py`` use it alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from lupita.config import CommonSettings
from stream_processor.models.embeddings.base import EmbeddingConfigError
from stream_processor.models.embeddings.local_use import USE_DIM
from stream_processor.models.embeddings.openai_backend import MAX_BATCH, openai_dim


class EmbedSettings(CommonSettings):
    """Which embedding backend runs, and how (``LUPITA_EMBED_<FIELD>``)."""

    # Without it a validation error prints the whole input, API keys included.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    # "local" (USE multilingual v3, 512-d, offline) or "openai" (text-embedding-3-small, 1536-d).
    # The vector size follows the backend; the Weaviate collections are created to match.
    embed_backend: Literal["local", "openai"] = "local"
    # When the cloud backend fails (retries used up, malformed answer, refused key): "local" embeds
    # with the local model instead, "none" raises. "local" is refused unless both make vectors of
    # the same size (LUPITA_EMBED_OPENAI_DIMENSIONS=512).
    embed_fallback: Literal["none", "local"] = "none"
    # BLAS threads of the local model.
    embed_threads: int = Field(default=1, ge=1, le=64)

    # --- OpenAI ---
    embed_openai_api_key: SecretStr = SecretStr("")
    # Empty = the client's default (https://api.openai.com/v1).
    embed_openai_base_url: str = ""
    embed_openai_model: str = "text-embedding-3-small"
    # Shorter vectors from text-embedding-3-* (unset = the model's native size, 1536 for -small).
    embed_openai_dimensions: int | None = Field(default=None, ge=1)
    # Wire format of the vectors: base64 (what the official client asks for by default; 4 bytes a
    # value) or float (JSON numbers).
    embed_openai_encoding: Literal["base64", "float"] = "base64"
    # Texts per request (the API takes at most 2048).
    embed_openai_batch_size: int = Field(default=256, ge=1, le=MAX_BATCH)
    # Per request timeout, attempts (1 = no retry), backoff, and the longest Retry-After obeyed.
    embed_timeout_seconds: float = Field(default=20.0, gt=0)
    embed_max_attempts: int = Field(default=4, ge=1, le=10)
    embed_backoff_seconds: float = Field(default=0.5, ge=0)
    embed_max_backoff_seconds: float = Field(default=8.0, ge=0)
    embed_max_retry_after_seconds: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "EmbedSettings":
        if self.embed_backend == "openai":
            if not self.embed_openai_api_key.get_secret_value():
                raise ValueError("LUPITA_EMBED_BACKEND=openai needs LUPITA_EMBED_OPENAI_API_KEY")
            try:
                dim = openai_dim(self.embed_openai_model, self.embed_openai_dimensions)
            except EmbeddingConfigError as exc:
                raise ValueError(f"LUPITA_EMBED_OPENAI_MODEL / LUPITA_EMBED_OPENAI_DIMENSIONS: {exc}") from None
            if self.embed_fallback == "local" and dim != USE_DIM:
                raise ValueError(
                    f"LUPITA_EMBED_FALLBACK=local is refused: {self.embed_openai_model} makes {dim}-d vectors and "
                    f"the local model {USE_DIM}-d, and a collection holds one vector size. Set "
                    f"LUPITA_EMBED_FALLBACK=none, or LUPITA_EMBED_OPENAI_DIMENSIONS={USE_DIM}")
        return self

    @property
    def embed_dim(self) -> int:
        """Size of the vectors this configuration produces (without loading any model)."""
        if self.embed_backend == "local":
            return USE_DIM
        return openai_dim(self.embed_openai_model, self.embed_openai_dimensions)
