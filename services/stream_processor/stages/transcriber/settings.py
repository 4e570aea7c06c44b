"""Settings of the transcriber stage (``LUPITA_TRANSCRIBER_*`` and the ASR backend's
``LUPITA_ASR_*`` / cloud settings; frozen)."""

from __future__ import annotations

from pydantic import Field, field_validator

from stream_processor.models.asr.settings import AsrSettings


class TranscriberSettings(AsrSettings):
    """What the transcriber agent reads: the ASR backend's settings plus its own."""

    # Threads decoding segments (each runs one Transcriber call; the local model's own
    # parallelism is LUPITA_ASR_NUM_WORKERS).
    transcriber_threads: int = Field(default=1, ge=1, le=64)
    # More decode threads that take the person's finals only, so that a person's final never waits
    # for an agent's final, a packed window or a partial that another thread has started (a decode
    # cannot be interrupted). Asleep while no person final waits. The local model runs at least
    # transcriber_threads + transcriber_person_threads decodes in parallel (LUPITA_ASR_NUM_WORKERS
    # is raised to that when lower). 0 = none (the person's finals still go first in the queue).
    # Off by default: on the 2-core bench machine it showed no consistent gain (bench/README.md,
    # "Transcription capacity, session 9"): a third thread on two cores slows every decode.
    transcriber_person_threads: int = Field(default=0, ge=0, le=16)
    # Segments taken from Kafka and not yet transcribed (backpressure beyond that).
    transcriber_max_in_flight: int = Field(default=64, ge=1, le=10000)
    # Skip a partial snapshot when a newer record of the same segment is already waiting.
    transcriber_skip_stale_partials: bool = True
    # How long the per-leg dedupe progress is kept after the leg's end (redeliveries).
    transcriber_state_retention_seconds: float = Field(default=3600.0, gt=0)
    # Per-call vocabulary biasing (local backend): at a call's start the person's facts are read
    # once by phone hash (Postgres) and their names, places and medications, with a Mexican-Spanish
    # health lexicon, bias every decode of that call (faster-whisper hotwords). See
    # stages/transcriber/vocabulary.py; measured by bench/asr_encode.py (vocab= modes).
    transcriber_vocabulary: bool = False
    transcriber_vocabulary_max_terms: int = Field(default=48, ge=1, le=200)
    # Also the Mexican-Spanish health lexicon (models/asr/vocabulary.py) in every call's vocabulary.
    # Off: measured on the corpus, the lexicon as hotwords raised WER and wrote unsaid terms.
    transcriber_vocabulary_lexicon: bool = False
    # Lupita's (the agent's) leg decoded with another beam size / temperature ladder than the
    # person's (unset: LUPITA_ASR_BEAM_SIZE / LUPITA_ASR_TEMPERATURES for both). Alerts and facts
    # come from the person's leg; Lupita's words are her own TTS, read for context. The same loaded
    # model serves both legs. Local backend (and a cloud backend's local fallback) only.
    transcriber_agent_beam_size: int | None = Field(default=None, ge=1, le=16)
    transcriber_agent_temperatures: tuple[float, ...] | None = None

    @field_validator("transcriber_agent_temperatures")
    @classmethod
    def _agent_temperatures(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and (not v or any(t < 0 or t > 2 for t in v) or list(v) != sorted(v)):
            raise ValueError("LUPITA_TRANSCRIBER_AGENT_TEMPERATURES must be a non-empty ascending list of values in [0, 2]")
        return v
