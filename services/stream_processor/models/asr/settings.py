"""Settings of the transcriber (env prefix ``LUPITA_``, frozen).

A mixin-ready :class:`AsrSettings` deriving from :class:`lupita.config.CommonSettings`: the
stream-processor's settings class can inherit from it (``class TranscriberSettings(WorkerSettings,
AsrSettings)``) so the worker keeps one settings object; tests and ``bench/asr.py`` use it alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from lupita.config import CommonSettings


class AsrSettings(CommonSettings):
    """Which transcription backend runs, and how (``LUPITA_<FIELD>``)."""

    # Merged with CommonSettings' config. Without it a validation error prints the whole input,
    # API keys included ("input_value={..., 'openai_api_key': 'sk-...'}").
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    # Backend: "local" (faster-whisper + packaged Whisper base, offline), "openai" or "deepgram".
    asr_backend: Literal["local", "openai", "deepgram"] = "local"
    # When a cloud backend fails (after its retries, or with a malformed answer, or refused
    # credentials): "local" transcribes the segment with the local model instead; "none" raises.
    asr_fallback: Literal["none", "local"] = "local"
    # Language of the calls (ISO 639-1), passed to every backend.
    asr_language: str = Field(default="es", pattern=r"^[a-z]{2}$")

    # --- local (faster-whisper) ---
    # CPU threads of one model (CTranslate2 intra-op threads) and parallel model workers.
    asr_threads: int = Field(default=1, ge=1, le=64)
    asr_num_workers: int = Field(default=1, ge=1, le=16)
    asr_device: Literal["cpu", "cuda", "auto"] = "cpu"
    # CTranslate2 compute type: int8 on CPU; float16 / int8_float16 on a GPU.
    asr_compute_type: str = "int8"
    # Beam size of final transcripts and of partial hypotheses.
    asr_beam_size: int = Field(default=5, ge=1, le=16)
    asr_partial_beam_size: int = Field(default=1, ge=1, le=16)
    # Temperature fallback ladder (JSON list in the env, e.g. [0.0, 0.4, 0.8]) and the samples drawn
    # at each temperature above 0 (the best is kept). Whisper's own ladder is [0.0, 0.2, ..., 1.0]
    # with 5 samples; one fallback step with 2 samples costs far less CPU and held the word error
    # rate on the corpus (bench/asr_encode.py, bench/README.md "Fallback ladder"). No fallback at
    # all ([0.0]) was measured on 2026-12-03 (bench/README.md "Session 10"): a point lower WER and
    # 10% less CPU per segment, but on the whole corpus 2.3% empty finals on voiced segments instead
    # of 0.9% and topic accuracy 0.70 instead of 0.76, so the one step stays.
    asr_temperatures: tuple[float, ...] = (0.0, 0.5)
    asr_best_of: int = Field(default=2, ge=1, le=16)
    # faster-whisper's own Silero VAD filter inside each segment.
    asr_vad_filter: bool = True
    # Audio quieter than this (RMS, dBFS) is not decoded at all.
    asr_min_rms_dbfs: float = Field(default=-60.0, le=0)
    # Encoder window: "full" = Whisper's 30 s window whatever the segment's length (faster-whisper's
    # own behaviour); "trimmed" = the segment's features + asr_encoder_margin_seconds, at least
    # asr_encoder_min_window_seconds (much less encoder CPU on 2-15 s segments; bench/asr_encode.py).
    # Default "trimmed", at least 10 s, without the guard below: on two corpus samples (110 person
    # segments, 959 words, bench/asr_encode.py, 2026-12-03) the same WER as "full" (50.8% pooled,
    # both) at 2.3x less CPU per segment and 1.8x less than the previous default (no minimum, guard
    # on: 51.1%, a third of the segments decoded twice). With no minimum and no guard the WER was
    # up to 5 points worse: a 2-4 s window is far from what Whisper was trained on.
    asr_encoder_window: Literal["full", "trimmed"] = "trimmed"
    asr_encoder_margin_seconds: float = Field(default=1.0, ge=0, le=30)
    asr_encoder_min_window_seconds: float = Field(default=10.0, ge=0, le=30)
    # Trimmed window only: a final is decoded trimmed at the first temperature; when that is doubtful
    # (a mean log-probability below asr_encoder_guard_logprob or the fallback threshold, Whisper's
    # compression-ratio or no-speech threshold crossed, nothing decoded) it is decoded again with the
    # full window and the fallback ladder. Off by default since the 10 s minimum window (above).
    asr_encoder_guard: bool = False
    asr_encoder_guard_logprob: float = Field(default=-1.0, ge=-10, le=0)
    # Batching: windows (single segments or packed windows) waiting together, of any leg or call
    # with the same vocabulary, decoded in one CTranslate2 call, at most this many (1 = one by one).
    asr_batch_max_windows: int = Field(default=1, ge=1, le=64)
    # Packing: several closed segments of one leg waiting together are decoded in one window of at
    # most this many seconds (0 = every segment on its own), this much silence between two. On by
    # default: a backlog cost 1.2-1.7x less CPU per segment at the same WER (bench/asr_encode.py
    # pack= modes), and the fault suite and the end-to-end test pass with it. A segment decoded
    # alone (no backlog) is unchanged.
    asr_pack_max_seconds: float = Field(default=30.0, ge=0, le=30)
    asr_pack_gap_seconds: float = Field(default=1.0, ge=0.2, le=5)
    # A final that decodes to nothing although faster-whisper's Silero hears at least this much
    # speech in it is decoded again without the VAD filter and the no-speech skip (0 = never).
    asr_empty_retry_min_speech_seconds: float = Field(default=0.5, ge=0, le=30)

    # --- guards (see stream_processor.models.asr.guards) ---
    asr_no_speech_threshold: float = Field(default=0.6, ge=0, le=1)
    asr_logprob_threshold: float = Field(default=-1.0, le=0)
    # The mean log-probability under which Whisper decodes a segment again at the next temperature,
    # when it should differ from asr_logprob_threshold (None: the same, as in Whisper). Whisper
    # uses one threshold for that fallback and for its no-speech rule; here the no-speech rule
    # stays at asr_logprob_threshold (applied by the silence guard) and only the fallback moves.
    # -10 (the default) = fall back on the compression ratio (repetition loops) only: on this 8 kHz
    # audio a low log-probability is common and the second decode rarely better; measured in
    # bench/README.md ("Transcription capacity, sessions 11-13"): 3.5-7.5% less worker CPU at 10
    # calls, person-leg WER 56.0% -> 53.4% on the corpus, empty finals 2 of 213 (goal < 1%).
    asr_temperature_fallback_logprob_threshold: float | None = Field(default=-10.0, ge=-100, le=0)
    asr_compression_ratio_threshold: float = Field(default=2.4, gt=1)
    # An n-gram (n <= asr_max_ngram) repeated more than asr_max_repeats times is a loop.
    asr_max_ngram: int = Field(default=6, ge=1, le=20)
    asr_max_repeats: int = Field(default=3, ge=1, le=20)

    # --- cloud backends ---
    openai_api_key: SecretStr = SecretStr("")
    # Empty = the client's default (https://api.openai.com/v1).
    openai_base_url: str = ""
    # whisper-1 (word timings) or gpt-4o-transcribe / gpt-4o-mini-transcribe (no word timings).
    asr_openai_model: str = "whisper-1"
    deepgram_api_key: SecretStr = SecretStr("")
    deepgram_base_url: str = "https://api.deepgram.com"
    asr_deepgram_model: str = "nova-2"
    # Per request timeout, attempts (1 = no retry), backoff, and the longest Retry-After obeyed.
    asr_timeout_seconds: float = Field(default=30.0, gt=0)
    asr_max_attempts: int = Field(default=4, ge=1, le=10)
    asr_backoff_seconds: float = Field(default=0.5, ge=0)
    asr_max_backoff_seconds: float = Field(default=8.0, ge=0)
    asr_max_retry_after_seconds: float = Field(default=30.0, ge=0)

    @field_validator("asr_temperatures")
    @classmethod
    def _temperatures(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(t < 0 or t > 2 for t in v) or list(v) != sorted(v):
            raise ValueError("LUPITA_ASR_TEMPERATURES must be a non-empty ascending list of values in [0, 2]")
        return v

    @model_validator(mode="after")
    def _keys(self) -> "AsrSettings":
        if self.asr_backend == "openai" and not self.openai_api_key.get_secret_value():
            raise ValueError("LUPITA_ASR_BACKEND=openai needs LUPITA_OPENAI_API_KEY")
        if self.asr_backend == "deepgram" and not self.deepgram_api_key.get_secret_value():
            raise ValueError("LUPITA_ASR_BACKEND=deepgram needs LUPITA_DEEPGRAM_API_KEY")
        return self
