"""Builds the configured transcriber, and the cloud -> local fallback wrapper."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from stream_processor.models.asr.base import AsrAuthError, AsrBackendError, RetryPolicy, TranscriptResult, Transcriber
from stream_processor.models.asr.guards import GuardConfig
from stream_processor.models.asr.settings import AsrSettings

log = logging.getLogger("stream_processor.models.asr")


class FallbackTranscriber(Transcriber):
    """Ask ``primary`` (a cloud backend); when it fails with an :class:`AsrBackendError` (retries
    used up, malformed answer, refused credentials, unreachable), ask ``fallback`` (the local
    model) for the same audio. The result says so in ``fallback_from`` / ``fallback_reason``.

    Bad audio (:class:`~stream_processor.models.asr.base.AudioInputError`) is not a backend failure: it
    is raised, not retried elsewhere. Partials go to the fallback directly when ``partials_local``
    (a cloud round trip per partial costs money and latency for a hypothesis that is replaced
    seconds later).
    """

    def __init__(self, primary: Transcriber, fallback: Transcriber, *, partials_local: bool = True) -> None:
        self.primary = primary
        self.fallback = fallback
        self.partials_local = partials_local
        self.name = primary.name
        self.model = primary.model

    def transcribe(self, pcm: np.ndarray, sample_rate: int, *, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        try:
            return self.primary.transcribe(pcm, sample_rate, vocabulary=vocabulary)
        except AsrBackendError as exc:
            level = logging.ERROR if isinstance(exc, AsrAuthError) else logging.WARNING
            log.log(level, "asr backend failed, using the fallback", extra={
                "stage": "transcriber", "backend": self.primary.name, "fallback": self.fallback.name,
                "status": exc.status, "error": type(exc).__name__, "reason": str(exc)})
            result = self.fallback.transcribe(pcm, sample_rate, vocabulary=vocabulary)
            return replace(result, fallback_from=self.primary.name, fallback_reason=str(exc))

    def transcribe_partial(self, pcm: np.ndarray, sample_rate: int, *, vocabulary: tuple[str, ...] = ()) -> TranscriptResult:
        if self.partials_local:
            return self.fallback.transcribe_partial(pcm, sample_rate, vocabulary=vocabulary)
        try:
            return self.primary.transcribe_partial(pcm, sample_rate, vocabulary=vocabulary)
        except AsrBackendError as exc:
            result = self.fallback.transcribe_partial(pcm, sample_rate, vocabulary=vocabulary)
            return replace(result, fallback_from=self.primary.name, fallback_reason=str(exc))

    def with_decoding(self, *, beam_size: int | None = None,
                      temperatures: tuple[float, ...] | None = None) -> Transcriber:
        """The cloud backend as it is, its local fallback with the other decoding."""
        fallback = self.fallback.with_decoding(beam_size=beam_size, temperatures=temperatures)
        if fallback is self.fallback:
            return self
        return FallbackTranscriber(self.primary, fallback, partials_local=self.partials_local)

    def close(self) -> None:
        self.primary.close()
        self.fallback.close()


def guard_config(s: AsrSettings) -> GuardConfig:
    return GuardConfig(
        no_speech_threshold=s.asr_no_speech_threshold,
        logprob_threshold=s.asr_logprob_threshold,
        compression_ratio_threshold=s.asr_compression_ratio_threshold,
        max_ngram=s.asr_max_ngram,
        max_repeats=s.asr_max_repeats,
    )


def retry_policy(s: AsrSettings) -> RetryPolicy:
    """``LUPITA_ASR_MAX_ATTEMPTS``, ``_BACKOFF_SECONDS``, ``_MAX_BACKOFF_SECONDS``, ``_MAX_RETRY_AFTER_SECONDS``."""
    return RetryPolicy.from_settings(s, "asr")


def build_local(s: AsrSettings) -> Transcriber:
    from stream_processor.models.asr.whisper_local import WhisperLocal, WhisperOptions

    options = WhisperOptions(
        language=s.asr_language,
        beam_size=s.asr_beam_size,
        partial_beam_size=s.asr_partial_beam_size,
        temperatures=tuple(s.asr_temperatures),
        best_of=s.asr_best_of,
        vad_filter=s.asr_vad_filter,
        min_rms_dbfs=s.asr_min_rms_dbfs,
        compression_ratio_threshold=s.asr_compression_ratio_threshold,
        log_prob_threshold=s.asr_logprob_threshold,
        fallback_log_prob_threshold=s.asr_temperature_fallback_logprob_threshold,
        no_speech_threshold=s.asr_no_speech_threshold,
        encoder_window=s.asr_encoder_window,
        encoder_margin_s=s.asr_encoder_margin_seconds,
        encoder_min_window_s=s.asr_encoder_min_window_seconds,
        encoder_guard=s.asr_encoder_guard,
        encoder_guard_logprob=s.asr_encoder_guard_logprob,
        batch_max_windows=s.asr_batch_max_windows,
        pack_max_seconds=s.asr_pack_max_seconds,
        pack_gap_s=s.asr_pack_gap_seconds,
        empty_retry_min_speech_s=s.asr_empty_retry_min_speech_seconds,
    )
    return WhisperLocal(threads=s.asr_threads, num_workers=s.asr_num_workers, device=s.asr_device,
                        compute_type=s.asr_compute_type, options=options, guard=guard_config(s))


def build_cloud(s: AsrSettings, *, retry: RetryPolicy | None = None) -> Transcriber:
    retry = retry or retry_policy(s)
    if s.asr_backend == "openai":
        from stream_processor.models.asr.openai_backend import OpenAITranscriber

        return OpenAITranscriber(api_key=s.openai_api_key, base_url=s.openai_base_url or None,
                                 model=s.asr_openai_model, language=s.asr_language,
                                 timeout_s=s.asr_timeout_seconds, retry=retry, guard=guard_config(s))
    if s.asr_backend == "deepgram":
        from stream_processor.models.asr.deepgram_backend import DeepgramTranscriber

        return DeepgramTranscriber(api_key=s.deepgram_api_key, base_url=s.deepgram_base_url,
                                   model=s.asr_deepgram_model, language=s.asr_language,
                                   timeout_s=s.asr_timeout_seconds, retry=retry, guard=guard_config(s))
    raise ValueError(f"{s.asr_backend!r} is not a cloud backend")


def build_transcriber(s: AsrSettings, *, local: Transcriber | None = None,
                      retry: RetryPolicy | None = None) -> Transcriber:
    """The transcriber ``s.asr_backend`` names; a cloud one wrapped in :class:`FallbackTranscriber`
    when ``s.asr_fallback == "local"``. ``local`` reuses an already loaded local model (it is
    loaded here otherwise, at start-up, so a missing weight package fails fast)."""
    if s.asr_backend == "local":
        return local or build_local(s)
    cloud = build_cloud(s, retry=retry)
    if s.asr_fallback == "local":
        return FallbackTranscriber(cloud, local or build_local(s))
    return cloud
