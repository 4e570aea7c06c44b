"""OpenAI embeddings through the official ``openai`` client (``POST {base_url}/embeddings``).

Request (JSON, built by the client): ``{"input": [texts], "model": "text-embedding-3-small",
"encoding_format": "base64" | "float", "dimensions": N}`` (``dimensions`` only when configured;
``text-embedding-3-*`` only). The client itself asks for ``base64`` when no format is given and
decodes it; we always name the format and decode the raw body ourselves, so a malformed answer is
reported precisely. Answer: ``{"object": "list", "data": [{"object": "embedding", "index": i,
"embedding": [floats] | "<base64 of little-endian float32>"}], "model": ..., "usage":
{"prompt_tokens", "total_tokens"}}``; rows are put back in input order by ``index``.

Limits of the API: at most 2048 inputs per request and 300,000 tokens summed over them, 8192
tokens per input, no empty strings. Inputs are sent in batches of ``batch_size`` texts and at
most ``MAX_REQUEST_CHARS`` characters; blank texts never leave the process (zero rows, see
:mod:`.base`); an over-long input comes back as a 400, raised without retry.

The client's own retries are off (``max_retries=0``); its exceptions become backend errors through
:func:`~stream_processor.models.cloud.translate_sdk_error`, and :class:`~.base.RetryPolicy` retries
408/409/425/429/5xx, timeouts and connection errors with backoff, honouring ``Retry-After``;
401/403 raise :class:`~.base.EmbeddingAuthError` at once; a 2xx body that is not the documented
JSON raises :class:`~.base.EmbeddingMalformedResponse`. The API key is a ``SecretStr`` read only
when the client is built and never appears in messages or logs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import numpy as np
from pydantic import SecretStr

from stream_processor.models.embeddings.base import (
    Embedder,
    EmbeddingAuthError,
    EmbeddingBackendError,
    EmbeddingConfigError,
    EmbeddingMalformedResponse,
    RetryPolicy,
)
from stream_processor.models.cloud import json_object, translate_sdk_error

# Native output sizes; text-embedding-3-* accept a smaller ``dimensions``.
KNOWN_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
SHORTENABLE_PREFIX = "text-embedding-3"
MAX_BATCH = 2048
MAX_REQUEST_CHARS = 200_000  # keeps a request well under 300k tokens (Spanish runs ~4 chars/token)


def openai_dim(model: str, dimensions: int | None) -> int:
    """The vector size ``model`` returns with ``dimensions`` (None = the model's native size)."""
    native = KNOWN_DIMS.get(model)
    if dimensions is None:
        if native is None:
            raise EmbeddingConfigError(f"the size of {model!r} vectors is not known here; "
                                       "set LUPITA_EMBED_OPENAI_DIMENSIONS")
        return native
    if dimensions < 1:
        raise EmbeddingConfigError(f"dimensions must be >= 1, got {dimensions}")
    if not model.startswith(SHORTENABLE_PREFIX):
        raise EmbeddingConfigError(f"{model!r} does not accept 'dimensions' (only {SHORTENABLE_PREFIX}-* do)")
    if native is not None and dimensions > native:
        raise EmbeddingConfigError(f"{model!r} makes at most {native}-d vectors, {dimensions} asked")
    return dimensions


class OpenAIEmbedder(Embedder):
    name = "openai"

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str | None = None,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        encoding_format: Literal["base64", "float"] = "base64",
        batch_size: int = 256,
        timeout_s: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        import openai  # imported here: only deployments that select this backend need it loaded

        if not api_key.get_secret_value():
            raise EmbeddingConfigError("the OpenAI embedding backend needs an API key (LUPITA_EMBED_OPENAI_API_KEY)")
        if not 1 <= batch_size <= MAX_BATCH:
            raise EmbeddingConfigError(f"batch_size must be in [1, {MAX_BATCH}], got {batch_size}")
        if encoding_format not in ("base64", "float"):
            raise EmbeddingConfigError(f"encoding_format must be 'base64' or 'float', got {encoding_format!r}")
        self.model = model
        self.dimensions = dimensions
        self.dim = openai_dim(model, dimensions)
        self.encoding_format = encoding_format
        self.batch_size = batch_size
        self.retry = retry
        self._openai = openai
        self._client = openai.OpenAI(api_key=api_key.get_secret_value(), base_url=base_url or None,
                                     max_retries=0, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def _embed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start, end in self._batches(texts):
            chunk = texts[start:end]
            payload = self.retry.run(lambda chunk=chunk: self._request(chunk), backend=self.name)
            try:
                out[start:end] = self._parse(payload, len(chunk))
            except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as exc:
                raise EmbeddingMalformedResponse(self.name, "response does not match the documented embeddings "
                                                 f"JSON: {exc}") from None
        return out

    def _batches(self, texts: list[str]) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        start, chars = 0, 0
        for i, t in enumerate(texts):
            if i > start and (i - start >= self.batch_size or chars + len(t) > MAX_REQUEST_CHARS):
                spans.append((start, i))
                start, chars = i, 0
            chars += len(t)
        spans.append((start, len(texts)))
        return spans

    # -- HTTP ----------------------------------------------------------------------------------

    def _request(self, chunk: list[str]) -> dict[str, Any]:
        openai = self._openai
        kwargs: dict[str, Any] = dict(input=chunk, model=self.model, encoding_format=self.encoding_format)
        if self.dimensions is not None:
            kwargs["dimensions"] = self.dimensions
        try:
            raw = self._client.embeddings.with_raw_response.create(**kwargs)
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            raise translate_sdk_error(self.name, exc, EmbeddingBackendError, auth_class=EmbeddingAuthError,
                                      key_setting="LUPITA_EMBED_OPENAI_API_KEY") from None
        return json_object(self.name, raw.http_response.content, raw.http_response.status_code,
                           EmbeddingMalformedResponse)

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self, payload: dict[str, Any], n: int) -> np.ndarray:
        data = payload["data"]
        if not isinstance(data, list):
            raise TypeError(f"'data' is {type(data).__name__}, not a list")
        if len(data) != n:
            raise ValueError(f"{len(data)} embeddings for {n} inputs")
        out = np.empty((n, self.dim), dtype=np.float32)
        filled = [False] * n
        for item in data:
            index = item["index"]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n or filled[index]:
                raise ValueError(f"bad or repeated index {index!r} (expected each of 0..{n - 1} once)")
            vec = _decode_vector(item["embedding"])
            if vec.shape != (self.dim,):
                raise ValueError(f"embedding {index} has {vec.size} values, expected {self.dim} "
                                 "(model/LUPITA_EMBED_OPENAI_DIMENSIONS)")
            if not np.isfinite(vec).all():
                raise ValueError(f"embedding {index} holds NaN or infinite values")
            out[index] = vec
            filled[index] = True
        return out


def _decode_vector(value: Any) -> np.ndarray:
    if isinstance(value, str):  # encoding_format=base64: little-endian float32
        raw = base64.b64decode(value, validate=True)
        if len(raw) % 4:
            raise ValueError(f"base64 embedding decodes to {len(raw)} bytes, not a whole number of float32")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, list):
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            raise TypeError("embedding list holds non-numbers")
        return np.asarray(value, dtype=np.float32)
    raise TypeError(f"embedding is {type(value).__name__}, expected a list of floats or a base64 string")

