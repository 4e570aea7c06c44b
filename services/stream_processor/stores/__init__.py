"""The stores: the S3 legal archive and the recorder's Postgres rows (``archive``, ``calls_db``),
and the understanding stage's sinks, Weaviate and Postgres, idempotent on natural keys, retried
with bounded backoff when a store is down.

Order for one finished call (:func:`stream_processor.stages.understanding.core.finish_call`, in a
worker thread):

1. ``weaviate_id = weaviate.write_call(doc, call_vector, utterances, utterance_vectors)``
2. ``postgres.write_call_analysis(call_id, analysis, transcript, utterances, weaviate_id, phone_hash)``
3. only then acknowledge the Kafka record.

Postgres last: ``companion_calls.processed_at`` marks a call whose results are all stored. A
crash between 1 and 2 leaves a Weaviate object that the redelivery rewrites with the same id.
:class:`SinkUnavailable` (store down past the retry budget of :class:`RetryPolicy`, the one policy
of :mod:`stream_processor.retry`): leave the record unacknowledged and retry later;
:class:`SinkRejected` / :class:`InvalidSinkInput`: retrying cannot help: the understanding stage
marks the call failed (logged, counted) and acknowledges; ``lupita replay`` redoes it once fixed.
"""

from stream_processor.stores.postgres import AnalysisWrite, PostgresSink, upsert_fact
from stream_processor.stores.retry import (
    InvalidSinkInput,
    RetryPolicy,
    SinkError,
    SinkRejected,
    SinkUnavailable,
    Stopped,
    describe,
    retry_call,
)
from stream_processor.stores.weaviate import (
    ConversationDoc,
    SchemaMismatch,
    SimilarCall,
    VectorDimensionMismatch,
    WeaviateSink,
    conversation_uuid,
    s3_uri,
    utterance_uuid,
)

__all__ = [
    "AnalysisWrite",
    "ConversationDoc",
    "InvalidSinkInput",
    "PostgresSink",
    "RetryPolicy",
    "SchemaMismatch",
    "SimilarCall",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
    "Stopped",
    "VectorDimensionMismatch",
    "WeaviateSink",
    "conversation_uuid",
    "describe",
    "retry_call",
    "s3_uri",
    "upsert_fact",
    "utterance_uuid",
]
