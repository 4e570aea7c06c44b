"""Settings of the analyzer (env prefix ``LUPITA_``, names ``LUPITA_ANALYZER_*``, frozen).

A mixin-ready :class:`AnalyzerSettings` deriving from :class:`lupita.config.CommonSettings`:
the worker's settings class can inherit from it so the worker keeps one settings object;
tests and benchmarks use it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from lupita.config import CommonSettings


class AnalyzerSettings(CommonSettings):
    """Which analyzer runs, and how (``LUPITA_<FIELD>``)."""

    # Never print the input (API key) in a validation error.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    # "local" (rules + lexicons, offline) or "anthropic" (Claude, official client).
    analyzer_backend: Literal["local", "anthropic"] = "local"
    # When the cloud backend fails in any way: "local" answers with the local analyzer (the
    # result says analyzer="anthropic->local" and why in notes); "none" raises.
    analyzer_fallback: Literal["local", "none"] = "local"

    # Catalogues (JSON); empty = the ones packaged in stream_processor/data/.
    analyzer_topics_path: Path | None = None
    analyzer_codes_path: Path | None = None
    analyzer_emotions_path: Path | None = None

    # --- local analyzer ---
    analyzer_max_topics: int = Field(default=5, ge=1, le=20)
    # Cosine between a person utterance and a topic prototype that counts as a topic signal
    # (only when an embedder is passed in).
    analyzer_embedding_threshold: float = Field(default=0.45, ge=-1, le=1)
    analyzer_summary_sentences: int = Field(default=3, ge=1, le=5)
    # Facts (either backend) whose confidence, after weighing the transcription probability of
    # the words they came from, is below this are not kept: a value the recogniser was unsure of
    # is not written to a person's memory.
    analyzer_fact_min_confidence: float = Field(default=0.5, ge=0, le=1)

    # --- anthropic ---
    analyzer_anthropic_api_key: SecretStr = SecretStr("")
    # Empty = the client's default (https://api.anthropic.com).
    analyzer_anthropic_base_url: str = ""
    analyzer_anthropic_model: str = Field(default="claude-sonnet-4-5", min_length=1)
    analyzer_max_tokens: int = Field(default=2048, ge=256, le=32000)
    analyzer_temperature: float = Field(default=0.0, ge=0, le=1)
    # Transcript characters sent at most (utterances beyond are left out, and a note says so).
    analyzer_max_transcript_chars: int = Field(default=60000, ge=1000)
    # Per request timeout, attempts (1 = no retry), backoff, and the longest Retry-After obeyed.
    analyzer_timeout_seconds: float = Field(default=60.0, gt=0)
    analyzer_max_attempts: int = Field(default=3, ge=1, le=10)
    analyzer_backoff_seconds: float = Field(default=1.0, ge=0)
    analyzer_max_backoff_seconds: float = Field(default=10.0, ge=0)
    analyzer_max_retry_after_seconds: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _key(self) -> "AnalyzerSettings":
        if self.analyzer_backend == "anthropic" and not self.analyzer_anthropic_api_key.get_secret_value():
            raise ValueError("LUPITA_ANALYZER_BACKEND=anthropic needs LUPITA_ANALYZER_ANTHROPIC_API_KEY")
        return self
