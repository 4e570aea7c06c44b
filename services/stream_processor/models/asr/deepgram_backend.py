"""Deepgram pre-recorded transcription through the official ``deepgram-sdk`` (v7).

Wire format (built by the SDK, which takes a custom base URL through
``DeepgramClientEnvironment(base=...)``): ``POST {base}/v1/listen?model=nova-2&language=es&punctuate=true``
with ``Authorization: Token <key>``, ``Content-Type: audio/wav`` and the segment as a mono 16-bit
WAV at its own sample rate. Answer::

    {"metadata": {"request_id", "duration", "channels", ...},
     "results": {"channels": [{"alternatives": [{"transcript", "confidence",
                  "words": [{"word", "start", "end", "confidence", "punctuated_word"}]}]}]}}

The transcript is ``results.channels[0].alternatives[0]``: one segment with its words (the
``punctuated_word`` form when present) and their confidences. Errors are JSON
``{"err_code", "err_msg", "request_id"}``.

The SDK's own retries are off (``max_retries=0``); its exceptions (``ApiError``, httpx's transport
errors) become backend errors through :func:`~stream_processor.models.cloud.translate_sdk_error`, and
:class:`~stream_processor.models.asr.base.RetryPolicy` retries 408/409/429/5xx (and an answer without a
status), timeouts and connection errors, honouring ``Retry-After``; 401/403 raise
:class:`~stream_processor.models.asr.base.AsrAuthError` at once; a 2xx body that is not the documented
JSON raises :class:`~stream_processor.models.asr.base.AsrMalformedResponse`. The API key never appears
in messages or logs (the SDK also redacts it from its own error headers).
"""

from __future__ import annotations

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
from stream_processor.models.cloud import translate_sdk_error

DEFAULT_BASE_URL = "https://api.deepgram.com"


class DeepgramTranscriber(Transcriber):
    name = "deepgram"

    def __init__(
        self,
        *,
        api_key: SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        model: str = "nova-2",
        language: str = "es",
        timeout_s: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        guard: GuardConfig = GuardConfig(),
    ) -> None:
        import httpx
        from deepgram import DeepgramClient
        from deepgram.core.api_error import ApiError
        from deepgram.environment import DeepgramClientEnvironment

        if not api_key.get_secret_value():
            raise ValueError("the Deepgram transcription backend needs an API key (LUPITA_DEEPGRAM_API_KEY)")
        base = base_url.rstrip("/")
        ws = "wss://" + base.split("://", 1)[-1] if base.startswith("https") else "ws://" + base.split("://", 1)[-1]
        self.model = model
        self.language = language
        self.retry = retry
        self.guard = guard
        self._httpx = httpx
        self._api_error = ApiError
        self._client = DeepgramClient(
            api_key=api_key.get_secret_value(),
            environment=DeepgramClientEnvironment(base=base, production=ws, agent=ws, agent_rest=base),
            max_retries=0,
            timeout=timeout_s,
        )

    def close(self) -> None:
        wrapper = getattr(self._client, "_client_wrapper", None)
        httpx_client = getattr(getattr(wrapper, "httpx_client", None), "httpx_client", None)
        if httpx_client is not None:
            httpx_client.close()

    def transcribe(self, pcm: np.ndarray, sample_rate: int, *, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        x = as_mono_float32(pcm, sample_rate)
        duration = x.size / int(sample_rate)
        wav = encode_wav(x, sample_rate)
        payload = self.retry.run(lambda: self._request(wav), backend=self.name)
        try:
            segments = self._parse(payload, duration)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise AsrMalformedResponse(self.name, "response does not match the documented /v1/listen shape "
                                       f"(results.channels[0].alternatives[0]): {exc!r}") from None
        kept, actions = guard_segments(segments, self.guard)
        return TranscriptResult(kept, self.language, False, self.name, self.model, duration, guard_actions=actions)

    # -- HTTP ----------------------------------------------------------------------------------

    def _request(self, wav: bytes) -> dict[str, Any]:
        try:
            response = self._client.listen.v1.media.with_raw_response.transcribe_file(
                request=wav, model=self.model, language=self.language, punctuate=True,
                request_options={"additional_headers": {"content-type": "audio/wav"}},
            )
        except (self._api_error, self._httpx.TransportError) as exc:
            raise translate_sdk_error(self.name, exc, AsrBackendError, auth_class=AsrAuthError,
                                      malformed_class=AsrMalformedResponse,
                                      key_setting="LUPITA_DEEPGRAM_API_KEY") from None
        data = response.data
        payload = data.dict() if hasattr(data, "dict") else data
        if not isinstance(payload, dict):
            raise AsrMalformedResponse(self.name, f"expected a JSON object, got {type(payload).__name__}",
                                       status=response.status_code)
        return payload

    # -- parsing -------------------------------------------------------------------------------

    def _parse(self, payload: dict[str, Any], duration: float) -> list[TranscriptSegment]:
        alt = payload["results"]["channels"][0]["alternatives"][0]
        transcript = alt["transcript"]
        if not isinstance(transcript, str):
            raise TypeError(f"'transcript' is {type(transcript).__name__}, not a string")
        words = [
            Word(str(w.get("punctuated_word") or w["word"]), float(w["start"]), float(w["end"]),
                 float(w["confidence"]) if w.get("confidence") is not None else None)
            for w in alt.get("words") or []
        ]
        words_t = sanitize_words(words, duration)
        text = " ".join(w.text for w in words_t) if words_t else transcript.strip()
        if not text:
            return []
        conf = alt.get("confidence")
        start = words_t[0].start if words_t else 0.0
        end = words_t[-1].end if words_t else round(duration, 3)
        return [TranscriptSegment(text, start, end, words_t,
                                  confidence_hint=float(conf) if conf is not None else None)]

