"""Call analysis at the end of a call (the understanding stage's analyzer): topics, emotion, behavioral codes, user facts, summary.

Plain synchronous code, no Kafka. ``build_analyzer(AnalyzerSettings())`` gives the configured
backend: the offline :class:`LocalAnalyzer` (default) or Claude through the official
``anthropic`` client with the local analyzer as fallback.
"""

from stream_processor.models.analyzer.base import (
    Analyzer,
    AnalyzerAuthError,
    AnalyzerBackendError,
    AnalyzerError,
    AnalyzerInputError,
    AnalyzerMalformedResponse,
    AnalyzerOutputInvalid,
    AnalyzerRefused,
    FallbackAnalyzer,
    RetryPolicy,
)
from stream_processor.models.analyzer.catalog import CatalogueError, Catalogues, load_catalogues
from stream_processor.models.analyzer.factory import build_analyzer
from stream_processor.models.analyzer.local import LocalAnalyzer
from stream_processor.models.analyzer.settings import AnalyzerSettings

__all__ = [
    "Analyzer", "AnalyzerAuthError", "AnalyzerBackendError", "AnalyzerError", "AnalyzerInputError",
    "AnalyzerMalformedResponse", "AnalyzerOutputInvalid", "AnalyzerRefused", "AnalyzerSettings",
    "CatalogueError", "Catalogues", "FallbackAnalyzer", "LocalAnalyzer", "RetryPolicy", "build_analyzer",
    "load_catalogues",
]
