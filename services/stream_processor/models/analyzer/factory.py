"""Builds the configured analyzer (and the cloud -> local fallback wrapper)."""

from __future__ import annotations

from stream_processor.models.analyzer.base import Analyzer, FallbackAnalyzer, RetryPolicy
from stream_processor.models.analyzer.catalog import Catalogues, load_catalogues
from stream_processor.models.analyzer.local import Embedder, LocalAnalyzer
from stream_processor.models.analyzer.settings import AnalyzerSettings


def catalogues_from(s: AnalyzerSettings) -> Catalogues:
    """The catalogues the settings name (packaged ones by default); a broken file fails here."""
    return load_catalogues(s.analyzer_topics_path, s.analyzer_codes_path, s.analyzer_emotions_path)


def retry_policy(s: AnalyzerSettings) -> RetryPolicy:
    """``LUPITA_ANALYZER_MAX_ATTEMPTS``, ``_BACKOFF_SECONDS``, ``_MAX_BACKOFF_SECONDS``, ``_MAX_RETRY_AFTER_SECONDS``."""
    return RetryPolicy.from_settings(s, "analyzer")


def build_local(s: AnalyzerSettings, *, catalogues: Catalogues | None = None,
                embedder: Embedder | None = None) -> LocalAnalyzer:
    return LocalAnalyzer(catalogues or catalogues_from(s), embedder=embedder, max_topics=s.analyzer_max_topics,
                         embedding_threshold=s.analyzer_embedding_threshold,
                         summary_sentences=s.analyzer_summary_sentences,
                         min_fact_confidence=s.analyzer_fact_min_confidence)


def build_analyzer(s: AnalyzerSettings, *, embedder: Embedder | None = None, retry: RetryPolicy | None = None,
                   catalogues: Catalogues | None = None) -> Analyzer:
    """The analyzer ``s.analyzer_backend`` names; the cloud one wrapped in :class:`FallbackAnalyzer`
    when ``s.analyzer_fallback == "local"``. Catalogues are loaded (and validated) here, at start-up."""
    cat = catalogues or catalogues_from(s)
    if s.analyzer_backend == "local":
        return build_local(s, catalogues=cat, embedder=embedder)
    if s.analyzer_backend == "anthropic":
        from stream_processor.models.analyzer.anthropic_backend import AnthropicAnalyzer

        cloud = AnthropicAnalyzer(
            api_key=s.analyzer_anthropic_api_key, catalogues=cat, base_url=s.analyzer_anthropic_base_url or None,
            model=s.analyzer_anthropic_model, max_tokens=s.analyzer_max_tokens,
            temperature=s.analyzer_temperature, timeout_s=s.analyzer_timeout_seconds,
            max_transcript_chars=s.analyzer_max_transcript_chars, retry=retry or retry_policy(s),
            min_fact_confidence=s.analyzer_fact_min_confidence)
        if s.analyzer_fallback == "local":
            return FallbackAnalyzer(cloud, build_local(s, catalogues=cat, embedder=embedder))
        return cloud
    raise ValueError(f"unknown analyzer backend {s.analyzer_backend!r}")
