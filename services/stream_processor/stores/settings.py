"""Settings of the sinks (env prefix ``LUPITA_``, frozen).

:class:`SinkSettings` derives from :class:`lupita.config.CommonSettings` (Postgres DSN, Weaviate
host and ports); a worker's own settings class can inherit it beside its others
(``class UnderstandingSettings(RecorderSettings, SinkSettings)``), so there is still one
settings object per service.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from lupita.config import CommonSettings

from stream_processor.stores.retry import RetryPolicy

COLLECTION_NAME = r"^[A-Z][_0-9A-Za-z]{0,127}$"


class SinkSettings(CommonSettings):
    """Retry budget and store options of the Postgres and Weaviate sinks."""

    # A store that is down is retried with exponential backoff and jitter, at most this many
    # attempts and never past this many seconds; then the write fails as "unavailable" and the
    # caller leaves the record unacknowledged (it is retried later, writes are idempotent).
    sink_retry_max_attempts: int = Field(default=6, ge=1, le=100)
    sink_retry_max_elapsed_seconds: float = Field(default=30.0, ge=0)
    sink_retry_initial_seconds: float = Field(default=0.2, ge=0)
    sink_retry_max_delay_seconds: float = Field(default=5.0, ge=0)
    # Postgres connect timeout (libpq connect_timeout, whole seconds).
    sink_postgres_connect_timeout_seconds: int = Field(default=5, ge=1, le=300)
    # Weaviate's gRPC endpoint host, when it is not LUPITA_WEAVIATE_HOST (the Weaviate Helm chart
    # serves gRPC through its own Service, "weaviate-grpc"); empty = LUPITA_WEAVIATE_HOST. The port
    # is LUPITA_WEAVIATE_GRPC_PORT.
    weaviate_grpc_host: str = ""
    # Weaviate client timeouts: start-up checks, and each query / insert call.
    weaviate_init_timeout_seconds: float = Field(default=5.0, gt=0)
    weaviate_timeout_seconds: float = Field(default=30.0, gt=0)
    # Collection names (one call object; one object per transcript segment).
    weaviate_conversation_collection: str = Field(default="LupitaConversation", pattern=COLLECTION_NAME)
    weaviate_utterance_collection: str = Field(default="LupitaUtterance", pattern=COLLECTION_NAME)

    # (a distinct name: validators of the same name in sibling mixins would shadow each other)
    @model_validator(mode="after")
    def _sink_collections_differ(self) -> "SinkSettings":
        if self.weaviate_conversation_collection == self.weaviate_utterance_collection:
            raise ValueError(
                "LUPITA_WEAVIATE_CONVERSATION_COLLECTION and LUPITA_WEAVIATE_UTTERANCE_COLLECTION must differ"
            )
        return self

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.sink_retry_max_attempts,
            max_elapsed_s=self.sink_retry_max_elapsed_seconds,
            initial_delay_s=self.sink_retry_initial_seconds,
            max_delay_s=self.sink_retry_max_delay_seconds,
        )
