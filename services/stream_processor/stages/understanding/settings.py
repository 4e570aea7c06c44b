"""Settings of the understanding stage (``LUPITA_UNDERSTANDING_*`` and the settings of the
models and stores it uses: alerts, analyzer, embeddings, sinks; frozen)."""

from __future__ import annotations

from pydantic import Field

from stream_processor.models.analyzer.settings import AnalyzerSettings
from stream_processor.models.embeddings.settings import EmbedSettings
from stream_processor.stages.understanding.alerts import AlertSettings
from stream_processor.stores.settings import SinkSettings


class UnderstandingSettings(SinkSettings, EmbedSettings, AnalyzerSettings, AlertSettings):
    """Settings of the understanding stage (``LUPITA_<FIELD>``): the sinks', embedder's,
    analyzer's and alert catalogue's settings plus the agent's own ``understanding_*`` ones.
    The worker's settings class inherits it next to the other stages'."""

    # Threads doing the blocking work (analyzer, embedder, Weaviate, Postgres) off the event loop.
    understanding_threads: int = Field(default=2, ge=1, le=64)
    # A finish (or an alert write) that failed because a store stayed down for the sinks' whole
    # retry budget is tried again after this delay, doubling up to the maximum; other calls go on
    # meanwhile, and the Kafka record that triggered it stays unacknowledged until it succeeds.
    understanding_retry_initial_seconds: float = Field(default=2.0, gt=0)
    understanding_retry_max_seconds: float = Field(default=60.0, gt=0)
    # A finished (or skipped) call's tombstone is kept this long, so redelivered transcripts
    # are recognised and ignored; afterwards the stores' idempotency still holds.
    understanding_state_retention_seconds: float = Field(default=3600.0, gt=0)
    # The person's calls nearest to a call just analysed (Weaviate, the person's own only) are
    # stored with its analysis (``person_past_conversations``), so the context API reads them
    # instead of asking Weaviate per request: how many (the call itself included; 0 = off). The
    # context API shows the best few after leaving out the last calls it already lists: keep it at
    # least the context API's PAST_CONVERSATIONS + RECENT_CALLS + 1 (3 + 3 + 1 by default).
    understanding_past_candidates: int = Field(default=16, ge=0, le=100)
