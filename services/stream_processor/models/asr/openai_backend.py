"""OpenAI transcription through the official ``openai`` client (``POST {base_url}/audio/transcriptions``).

Request (multipart/form-data, built by the client): ``file`` = the segment as a mono 16-bit WAV
at its own sample rate, ``model``, ``language=es``, ``temperature=0`` and

- ``whisper-1``: ``response_format=verbose_json`` and ``timestamp_granularities[]=word`` +
  ``segment``. Answer: ``{"text", "language": "spanish", "duration", "words": [{"word", "start",
  "end"}], "segments": [{"id", "start", "end", "text", "avg_logprob", "no_speech_prob",
  "compression_ratio", ...}]}``. Words are assigned to the segment whose time span holds them;
  they carry no probability (the segment's ``exp(avg_logprob)`` is its confidence).
- ``gpt-4o-transcribe`` / ``gpt-4o-mini-transcribe`` (they accept only ``json`` or ``text``):
  ``response_format=json`` with ``include[]=logprobs``. Answer: ``{"text", "logprobs": [{"token",
  "logprob", "bytes"}], "usage"}``: one segment spanning the audio, no word timings, confidence
  = exp(mean token logprob).

The client's own retries are off (``max_retries=0``); its exceptions become backend errors through
:func:`~stream_processor.models.cloud.translate_sdk_error`, and :class:`~stream_processor.models.asr.base.RetryPolicy`
retries 408/409/429/5xx, timeouts and connection errors with backoff, honouring ``Retry-After``;
401/403 raise :class:`~stream_processor.models.asr.base.AsrAuthError` at once; a 2xx body that is not the
documented JSON raises :class:`~stream_processor.models.asr.base.AsrMalformedResponse`. The API key is a
``SecretStr`` read only when the client is built; it never appears in messages or logs.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np
from pydantic import SecretStr

from stream_processor.models.asr.base import (
    AsrAuthError,
    AsrBackendError,
    AsrMalformedResponse,
    RetryPolicy,
    TranscriptResult,
    TranscriptSegment,
    Transcriber,
    Word,
    as_mono_float32,
    encode_wav,
    sanitize_words,
)
from stream_processor.models.asr.guards import GuardConfig, guard_segments
from stream_processor.models.cloud import json_object, translate_sdk_error

VERBOSE_MODELS_PREFIX = "whisper"
# OpenAI answers the language of verbose_json as an English name.
LANGUAGE_NAMES = {"spanish": "es", "english": "en", "portuguese": "pt", "catalan": "ca", "french": "fr"}


class OpenAITranscriber(Transcriber):
    name = "openai"

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str | None = None,
        model: str = "whisper-1",
        language: str = "es",
        timeout_s: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        guard: GuardConfig = GuardConfig(),
    ) -> None:
        import openai  # imported here: only deployments that select this backend need it loaded

        if not api_key.get_secret_value():
            raise ValueError("the OpenAI transcription backend needs an API key (LUPITA_OPENAI_API_KEY)")
        self.model = model
        self.language = language
        self.retry = retry
        self.guard = guard
        self._openai = openai
        self._client = openai.OpenAI(api_key=api_key.get_secret_value(), base_url=base_url or None,
                                     max_retries=0, timeout=timeout_s)

    @property
    def verbose(self) -> bool:
        return self.model.startswith(VERBOSE_MODELS_PREFIX)

    def close(self) -> None:
        self._client.close()

    def transcribe(self, pcm: np.ndarray, sample_rate: int, *, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        x = as_mono_float32(pcm, sample_rate)
        duration = x.size / int(sample_rate)
        wav = encode_wav(x, sample_rate)
        payload = self.retry.run(lambda: self._request(wav), backend=self.name)
        try:
            segments, language = self._parse(payload, duration)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise AsrMalformedResponse(self.name, f"response does not match the documented "
                                       f"{'verbose_json' if self.verbose else 'json'} shape: {exc!r}") from None
        kept, actions = guard_segments(segments, self.guard)
        return TranscriptResult(kept, language, False, self.name, self.model, duration, guard_actions=actions)

    # -- HTTP ----------------------------------------------------------------------------------

    def _request(self, wav: bytes) -> dict[str, Any]:
        openai = self._openai
        kwargs: dict[str, Any] = dict(file=("segment.wav", wav, "audio/wav"), model=self.model,
                                      language=self.language, temperature=0.0)
        if self.verbose:
            kwargs.update(response_format="verbose_json", timestamp_granularities=["word", "segment"])
        else:
            kwargs.update(response_format="json", include=["logprobs"])
        try:
            raw = self._client.audio.transcriptions.with_raw_response.create(**kwargs)
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            raise translate_sdk_error(self.name, exc, AsrBackendError, auth_class=AsrAuthError,
                                      key_setting="LUPITA_OPENAI_API_KEY") from None
        return json_object(self.name, raw.http_response.content, raw.http_response.status_code,
                           AsrMalformedResponse)

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self, payload: dict[str, Any], duration: float) -> tuple[list[TranscriptSegment], str]:
        text = payload["text"]
        if not isinstance(text, str):
            raise TypeError(f"'text' is {type(text).__name__}, not a string")
        given = payload.get("language") or self.language
        language = LANGUAGE_NAMES.get(str(given).lower(), str(given))
        if not self.verbose:
            logprobs = [float(lp["logprob"]) for lp in payload.get("logprobs") or [] if lp.get("logprob") is not None]
            hint = math.exp(sum(logprobs) / len(logprobs)) if logprobs else None
            seg = TranscriptSegment(text.strip(), 0.0, round(duration, 3), (), confidence_hint=hint)
            return ([seg] if seg.text else []), language
        words = [Word(str(w["word"]), float(w["start"]), float(w["end"]), None) for w in payload.get("words") or []]
        words = list(sanitize_words(words, duration))
        raw_segments = payload.get("segments")
        if not raw_segments:  # words only: one segment over the audio
            seg = TranscriptSegment(text.strip(), 0.0, round(duration, 3), tuple(words))
            return ([seg] if seg.text else []), language
        parsed = sorted(raw_segments, key=lambda s: float(s["start"]))
        starts = [float(s["start"]) for s in parsed]
        owned: list[list[Word]] = [[] for _ in parsed]
        for w in words:  # a word belongs to the last segment starting at or before it (first if none)
            owned[max(0, bisect.bisect_right(starts, w.start + 0.05) - 1)].append(w)
        segments: list[TranscriptSegment] = []
        for s, mine in zip(parsed, owned):
            start = float(s["start"])
            segments.append(TranscriptSegment(
                text=str(s["text"]).strip(),
                start=round(min(max(0.0, start), duration), 3),
                end=round(min(max(float(s["end"]), start), duration), 3),
                words=tuple(mine),
                avg_logprob=_opt_float(s, "avg_logprob"),
                no_speech_prob=_opt_float(s, "no_speech_prob"),
                compression_ratio=_opt_float(s, "compression_ratio"),
            ))
        return segments, language


def _opt_float(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    return None if value is None else float(value)

