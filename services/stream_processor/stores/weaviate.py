"""Weaviate sink: one ``LupitaConversation`` object per call and one ``LupitaUtterance`` object per
final transcript segment, with OUR vectors (no vectorizer module; "bring your own vectors").

- Object ids are deterministic: ``generate_uuid5(call_id)`` for the call and
  ``generate_uuid5(f"{call_id}:{leg}:{seq}")`` for an utterance, and objects are written through
  the batch API, which replaces an object with the same id: a redelivery or a replay never
  duplicates. After a call's utterances are written, those of the call whose id is no longer in
  the set (a replay found fewer segments) are deleted.
- :meth:`WeaviateSink.ensure_collections` creates both collections when missing, adds properties
  a collection lacks, and REFUSES (:class:`VectorDimensionMismatch`) a collection whose vectors
  have another size than the embedding backend's: Weaviate learns a vector index's size from its
  first vector, so the size is recorded in the collection description (``[lupita vector_dim=N]``)
  and checked against a stored vector when there is one.
- Writes run with the retry policy; connection failures, timeouts, 408/429/5xx and gRPC
  UNAVAILABLE / DEADLINE_EXCEEDED are transient, 4xx (422 invalid object) and schema / dimension
  errors are permanent. Before each operation a cheap readiness probe fails fast when the server
  is down, instead of the client's own multi-second gRPC retries.

Synchronous (the v4 sync client): call it from a worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence, TypeVar

import grpc
import httpx
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Timeout
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertManyAllFailedError,
    WeaviateQueryError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)
from weaviate.util import generate_uuid5

from stream_processor.contracts import CallAnalysis, Utterance
from stream_processor.stores import metrics
from stream_processor.stores.retry import InvalidSinkInput, RetryPolicy, SinkRejected

log = logging.getLogger(__name__)

T = TypeVar("T")

STORE = "weaviate"
VECTOR_NAME = "default"  # the name Weaviate gives a collection's single self-provided vector
LEGS = ("lupita", "person")
BATCH_SIZE = 200
_DIM_MARKER = re.compile(r"\[lupita vector_dim=(\d+)\]")

CONVERSATION_PROPERTIES: tuple[Property, ...] = (
    Property(name="call_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
    Property(name="s3_uri", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
    Property(name="phone_number_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
    Property(name="topics", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD),
    Property(name="emotion", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
    Property(name="behavioral_codes", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD),
    Property(name="duration_seconds", data_type=DataType.NUMBER),
    Property(name="region", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
    Property(name="started_at", data_type=DataType.DATE),
    Property(name="summary", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
)
UTTERANCE_PROPERTIES: tuple[Property, ...] = (
    Property(name="call_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
    Property(name="leg", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
    Property(name="seq", data_type=DataType.INT),
    Property(name="start_s", data_type=DataType.NUMBER),
    Property(name="end_s", data_type=DataType.NUMBER),
    Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
    Property(name="phone_number_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
)

# gRPC status codes (as ints, how UnexpectedStatusCodeError reports them) worth a retry
_GRPC_TRANSIENT = {
    grpc.StatusCode.CANCELLED.value[0],
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
    grpc.StatusCode.ABORTED.value[0],
    grpc.StatusCode.UNAVAILABLE.value[0],
}
_TRANSIENT_HINTS = (
    "unavailable", "deadline", "timeout", "timed out", "connection refused", "connection reset",
    "connection closed", "broken pipe", "too many requests", "resource exhausted", "read-only",
    "readonly", "not ready", "temporarily",
    # gRPC's words for a channel lost while the server restarts (seen as a batch error: "Query call
    # with protocol GRPC batch failed with message Channel closed!")
    "channel closed", "socket closed", "stream removed", "transport is closing",
)
_PERMANENT_HINTS = ("vector dimensions do not match", "invalid", "no such prop", "unprocessable")


class VectorDimensionMismatch(SinkRejected):
    """The collection holds vectors of another size than the embedding backend makes."""


class SchemaMismatch(SinkRejected):
    """An existing collection cannot hold our objects (a property of another type, no
    self-provided default vector)."""


class _ObjectsFailed(WeaviateBaseError):
    """Some objects of a batch (or a batch delete) failed; ``transient`` from their messages."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _message_transient(message: str) -> bool:
    text = message.lower()
    if "could not find class" in text:  # the collection was dropped: re-ensured on the next attempt
        return True
    if any(h in text for h in _PERMANENT_HINTS):
        return False
    return any(h in text for h in _TRANSIENT_HINTS)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: server down or restarting, timeouts, 408/429/5xx,
    gRPC UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED; False for 4xx (e.g. 422 invalid
    object), dimension and schema errors."""
    if isinstance(exc, _ObjectsFailed):
        return exc.transient
    if isinstance(exc, UnexpectedStatusCodeError):  # includes InsufficientPermissionsError (403)
        code = exc.status_code
        if code < 100:  # a gRPC status code
            return code in _GRPC_TRANSIENT
        return code in (408, 429) or code >= 500
    if isinstance(
        exc,
        (
            WeaviateConnectionError,
            WeaviateStartUpError,
            WeaviateTimeoutError,
            WeaviateGRPCUnavailableError,
            WeaviateClosedClientError,
            WeaviateRetryError,
        ),
    ):
        return True
    if isinstance(exc, (WeaviateQueryError, WeaviateInsertManyAllFailedError)):
        return _message_transient(str(exc))
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code().value[0] in _GRPC_TRANSIENT
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def _reconnect_needed(exc: BaseException) -> bool:
    return isinstance(
        exc,
        (WeaviateConnectionError, WeaviateStartUpError, WeaviateGRPCUnavailableError, WeaviateClosedClientError),
    )


def conversation_uuid(call_id: str) -> uuid.UUID:
    return uuid.UUID(generate_uuid5(call_id))


def utterance_uuid(call_id: str, leg: str, seq: int) -> uuid.UUID:
    return uuid.UUID(generate_uuid5(f"{call_id}:{leg}:{seq}"))


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def description_dim(description: str | None) -> int | None:
    m = _DIM_MARKER.search(description or "")
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class ConversationDoc:
    """The properties of one ``LupitaConversation`` object."""

    call_id: str
    s3_uri: str | None
    phone_number_hash: str | None
    topics: tuple[str, ...] = ()
    emotion: str | None = None
    behavioral_codes: tuple[str, ...] = ()
    duration_seconds: float | None = None
    region: str | None = None
    started_at: datetime | None = None
    summary: str = ""

    @classmethod
    def from_analysis(
        cls,
        analysis: CallAnalysis,
        *,
        s3_uri: str | None,
        phone_number_hash: str | None,
        duration_seconds: float | None = None,
        region: str | None = None,
        started_at: datetime | None = None,
    ) -> "ConversationDoc":
        return cls(
            call_id=analysis.call_id,
            s3_uri=s3_uri,
            phone_number_hash=phone_number_hash,
            topics=tuple(analysis.topics),
            emotion=analysis.emotion_primary or None,
            behavioral_codes=tuple(analysis.behavioral_codes),
            duration_seconds=duration_seconds,
            region=region,
            started_at=started_at,
            summary=analysis.summary,
        )

    def properties(self) -> dict[str, Any]:
        started = self.started_at
        if started is not None and started.tzinfo is None:
            started = started.replace(tzinfo=timezone.utc)
        return {
            "call_id": self.call_id,
            "s3_uri": self.s3_uri,
            "phone_number_hash": self.phone_number_hash,
            "topics": list(self.topics),
            "emotion": self.emotion,
            "behavioral_codes": list(self.behavioral_codes),
            "duration_seconds": None if self.duration_seconds is None else float(self.duration_seconds),
            "region": self.region,
            "started_at": started,
            "summary": self.summary,
        }


@dataclass(frozen=True)
class SimilarCall:
    call_id: str
    uuid: uuid.UUID
    distance: float | None
    properties: dict[str, Any]


class WeaviateSink:
    """Idempotent writes of calls and utterances to Weaviate; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8080,
        grpc_port: int = 50051,
        grpc_host: str = "",
        init_timeout_s: float = 5.0,
        timeout_s: float = 30.0,
        conversation_collection: str = "LupitaConversation",
        utterance_collection: str = "LupitaUtterance",
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if conversation_collection == utterance_collection:
            raise ValueError("the conversation and utterance collections must differ")
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.grpc_host = grpc_host or host  # empty: gRPC on the HTTP host
        self.conversation_collection = conversation_collection
        self.utterance_collection = utterance_collection
        self._timeouts = Timeout(init=init_timeout_s, query=timeout_s, insert=timeout_s)
        self._policy = policy or RetryPolicy()
        self._stop = stop
        self._lock = threading.RLock()
        self._client: weaviate.WeaviateClient | None = None
        self._dim: int | None = None  # the vector size both collections were checked for

    @classmethod
    def from_settings(cls, settings: Any, *, stop: threading.Event | None = None) -> "WeaviateSink":
        """From a :class:`~.settings.SinkSettings` (or a settings class deriving from it)."""
        return cls(
            host=settings.weaviate_host,
            http_port=settings.weaviate_http_port,
            grpc_port=settings.weaviate_grpc_port,
            grpc_host=settings.weaviate_grpc_host,
            init_timeout_s=settings.weaviate_init_timeout_seconds,
            timeout_s=settings.weaviate_timeout_seconds,
            conversation_collection=settings.weaviate_conversation_collection,
            utterance_collection=settings.weaviate_utterance_collection,
            policy=settings.retry_policy,
            stop=stop,
        )

    @property
    def dim(self) -> int | None:
        return self._dim

    # -- connection

    def _connected(self) -> weaviate.WeaviateClient:
        """The client, (re)connected if needed and the server answering its readiness probe."""
        with self._lock:
            if self._client is None or not self._client.is_connected():
                if self._client is not None:
                    self._close_client()
                self._client = weaviate.connect_to_custom(
                    http_host=self.host,
                    http_port=self.http_port,
                    http_secure=False,
                    grpc_host=self.grpc_host,
                    grpc_port=self.grpc_port,
                    grpc_secure=False,
                    additional_config=AdditionalConfig(timeout=self._timeouts),
                )
                _install_log_redaction()
            elif not self._client.is_ready():
                raise WeaviateConnectionError(
                    f"Weaviate at {self.host}:{self.http_port} does not answer its readiness probe"
                )
            return self._client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken client must not mask the error
                log.debug("closing the Weaviate client failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._close_client()

    def __enter__(self) -> "WeaviateSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(
        self,
        operation: str,
        call_id: str | None,
        work: Callable[[weaviate.WeaviateClient], T],
        on_retry: Callable[[int, float, BaseException], None] | None = None,
    ) -> T:
        def attempt() -> T:
            try:
                return work(self._connected())
            except Exception as exc:
                if _reconnect_needed(exc):
                    with self._lock:
                        self._close_client()
                if "could not find class" in str(exc).lower():
                    self._dim = None  # the collection went away: ensure it again next time
                raise

        return metrics.measured_retry(
            attempt, store=STORE, operation=operation, call_id=call_id, policy=self._policy,
            is_transient=is_transient, stop=self._stop, on_retry=on_retry,
        )

    # -- schema

    def ensure_collections(
        self, dim: int, *, on_retry: Callable[[int, float, BaseException], None] | None = None
    ) -> None:
        """Create both collections for ``dim``-sized vectors if missing, or check the existing
        ones: missing properties are added; another vector size or property type is refused."""
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise InvalidSinkInput(
                f"{STORE} ensure_collections: vector size must be a positive integer, got {dim!r}",
                store=STORE, operation="ensure_collections",
            )
        self._run("ensure_collections", None, lambda client: self._ensure(client, dim), on_retry)

    def _ensure(self, client: weaviate.WeaviateClient, dim: int) -> None:
        with self._lock:
            if self._dim == dim:
                return
            for name, props, what in (
                (self.conversation_collection, CONVERSATION_PROPERTIES, "one object per call"),
                (self.utterance_collection, UTTERANCE_PROPERTIES, "one object per transcript segment"),
            ):
                _ensure_collection(client, name, props, dim, what)
            self._dim = dim

    # -- writes

    def write_call(
        self,
        doc: ConversationDoc,
        vector: Sequence[float],
        utterances: Sequence[Utterance] = (),
        utterance_vectors: Sequence[Sequence[float]] = (),
        *,
        on_retry: Callable[[int, float, BaseException], None] | None = None,
    ) -> uuid.UUID:
        """Upsert the call object and its utterance objects, delete the call's utterance objects
        that are no longer in ``utterances``; returns the call object's id (``weaviate_id``).

        ``utterance_vectors[i]`` is the vector of ``utterances[i]``. The collections are ensured
        for ``len(vector)`` on first use; every vector must have that size.
        """
        op = "write_call"
        if not isinstance(doc, ConversationDoc):
            raise _bad(op, f"expected a ConversationDoc, got {type(doc).__name__}")
        call_id = doc.call_id
        if not isinstance(call_id, str) or not call_id:
            raise _bad(op, "the ConversationDoc has no call_id")
        vec = _vector(op, "the call vector", vector, None)
        dim = len(vec)
        if self._dim is not None and dim != self._dim:
            raise VectorDimensionMismatch(
                f"{STORE} {op}: call {call_id} has a {dim}-d vector but the collections hold "
                f"{self._dim}-d vectors", store=STORE, operation=op,
            )
        if len(utterances) != len(utterance_vectors):
            raise _bad(op, f"{len(utterances)} utterances but {len(utterance_vectors)} utterance vectors")
        props = doc.properties()
        conv_id = conversation_uuid(call_id)
        objs: list[DataObject] = []
        seen: set[tuple[str, int]] = set()
        for i, (u, v) in enumerate(zip(utterances, utterance_vectors)):
            where = f"utterance #{i}"
            if not isinstance(u, Utterance):
                raise _bad(op, f"{where} is a {type(u).__name__}, not an Utterance")
            if u.call_id != call_id:
                raise _bad(op, f"{where} belongs to call {u.call_id!r}, not {call_id!r}")
            if u.leg not in LEGS:
                raise _bad(op, f"{where} has leg {u.leg!r}; expected one of {', '.join(LEGS)}")
            if not isinstance(u.seq, int) or isinstance(u.seq, bool) or u.seq < 0:
                raise _bad(op, f"{where} has seq {u.seq!r}; expected an integer >= 0")
            if (u.leg, u.seq) in seen:
                raise _bad(op, f"{where} repeats ({u.leg}, seq {u.seq})")
            seen.add((u.leg, u.seq))
            for name in ("start_s", "end_s"):
                if not _finite(getattr(u, name)):
                    raise _bad(op, f"{where} has a non-finite {name}")
            objs.append(
                DataObject(
                    properties={
                        "call_id": call_id,
                        "leg": u.leg,
                        "seq": u.seq,
                        "start_s": float(u.start_s),
                        "end_s": float(u.end_s),
                        "text": u.text,
                        "phone_number_hash": doc.phone_number_hash,
                    },
                    uuid=utterance_uuid(call_id, u.leg, u.seq),
                    vector=_vector(op, f"{where} vector", v, dim),
                )
            )
        keep = [o.uuid for o in objs]

        def work(client: weaviate.WeaviateClient) -> uuid.UUID:
            self._ensure(client, dim)
            utt = client.collections.use(self.utterance_collection)
            for start in range(0, len(objs), BATCH_SIZE):
                _insert(utt, objs[start : start + BATCH_SIZE])
            where = Filter.by_property("call_id").equal(call_id)
            if keep:
                where = where & Filter.by_id().contains_none(keep)
            deleted = utt.data.delete_many(where=where)
            if deleted.failed:
                raise _ObjectsFailed(f"{deleted.failed} stale utterance object(s) could not be deleted", True)
            _insert(
                client.collections.use(self.conversation_collection),
                [DataObject(properties=props, uuid=conv_id, vector=vec)],
            )
            if deleted.successful:
                log.info(
                    "stale utterance objects deleted",
                    extra={"stage": "sink", "call_id": call_id, "deleted": deleted.successful},
                )
            return conv_id

        result = self._run(op, call_id, work, on_retry)
        log.info(
            "call stored in weaviate",
            extra={"stage": "sink", "call_id": call_id, "store": STORE, "utterances": len(objs), "dim": dim},
        )
        return result

    def delete_call(self, call_id: str) -> int:
        """Delete a call's objects (both collections), e.g. for an erasure request; returns how
        many were deleted."""
        def work(client: weaviate.WeaviateClient) -> int:
            n = 0
            for name in (self.utterance_collection, self.conversation_collection):
                if client.collections.exists(name):
                    res = client.collections.use(name).data.delete_many(
                        where=Filter.by_property("call_id").equal(call_id)
                    )
                    n += res.successful
            return n

        return self._run("delete_call", call_id, work)

    # -- reads (retrieval helpers)

    def similar_calls(
        self, vector: Sequence[float], *, phone_number_hash: str | None = None, limit: int = 4
    ) -> list[SimilarCall]:
        """Calls nearest to ``vector`` (cosine distance), optionally one person's only."""
        vec = _vector("similar_calls", "the query vector", vector, self._dim)

        def work(client: weaviate.WeaviateClient) -> list[SimilarCall]:
            col = client.collections.use(self.conversation_collection)
            filters = (
                Filter.by_property("phone_number_hash").equal(phone_number_hash)
                if phone_number_hash is not None else None
            )
            res = col.query.near_vector(
                near_vector=vec, limit=limit, filters=filters, return_metadata=MetadataQuery(distance=True)
            )
            return [
                SimilarCall(
                    call_id=str(o.properties.get("call_id")),
                    uuid=o.uuid,
                    distance=o.metadata.distance if o.metadata else None,
                    properties=dict(o.properties),
                )
                for o in res.objects
            ]

        return self._run("similar_calls", None, work)


# --------------------------------------------------------------------------- helpers


def _bad(operation: str, message: str) -> InvalidSinkInput:
    return InvalidSinkInput(f"{STORE} {operation}: {message}", store=STORE, operation=operation)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _vector(op: str, what: str, vector: Any, dim: int | None) -> list[float]:
    try:
        vec = [float(x) for x in vector]
    except (TypeError, ValueError):
        raise _bad(op, f"{what} is not a sequence of numbers") from None
    if not vec:
        raise _bad(op, f"{what} is empty")
    if not all(math.isfinite(x) for x in vec):
        raise _bad(op, f"{what} contains NaN or infinity")
    if dim is not None and len(vec) != dim:
        raise VectorDimensionMismatch(
            f"{STORE} {op}: {what} has {len(vec)} dimensions, expected {dim}", store=STORE, operation=op
        )
    return vec


def _insert(collection: Any, objects: list[DataObject]) -> None:
    """Batch upsert; raises if any object failed (the messages decide transient or not)."""
    if not objects:
        return
    res = collection.data.insert_many(objects)
    if res.errors:
        messages = sorted({e.message for e in res.errors.values()})
        raise _ObjectsFailed(
            f"{len(res.errors)} of {len(objects)} object(s) rejected by {collection.name}: "
            + "; ".join(m[:200] for m in messages[:3]),
            transient=all(_message_transient(m) for m in messages),
        )


def _stored_dim(collection: Any) -> int | None:
    res = collection.query.fetch_objects(limit=1, include_vector=True)
    for obj in res.objects:
        vectors = obj.vector or {}
        vec = vectors.get(VECTOR_NAME) if isinstance(vectors, dict) else vectors
        if vec is None and isinstance(vectors, dict) and vectors:
            vec = next(iter(vectors.values()))
        if vec:
            return len(vec)
    return None


def _ensure_collection(
    client: weaviate.WeaviateClient, name: str, props: Sequence[Property], dim: int, what: str
) -> None:
    description = f"Lupita: {what}, self-provided {dim}-d vectors [lupita vector_dim={dim}]"
    if not client.collections.exists(name):
        try:
            client.collections.create(
                name,
                description=description,
                vector_config=Configure.Vectors.self_provided(
                    vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
                ),
                properties=list(props),
            )
            log.info("weaviate collection created", extra={"stage": "sink", "collection": name, "dim": dim})
            return
        except UnexpectedStatusCodeError as exc:
            if "already exists" not in str(exc):
                raise
            # another worker created it meanwhile: check it like any existing collection
    collection = client.collections.use(name)
    config = collection.config.get()
    if config.vector_config is not None and VECTOR_NAME not in config.vector_config:
        raise SchemaMismatch(
            f"{STORE}: collection {name} has named vectors {sorted(config.vector_config)} but no "
            f"'{VECTOR_NAME}' vector for our own vectors", store=STORE, operation="ensure_collections",
        )
    stored = _stored_dim(collection)
    recorded = description_dim(config.description)
    existing = stored if stored is not None else recorded
    if existing is not None and existing != dim:
        raise VectorDimensionMismatch(
            f"{STORE}: collection {name} holds {existing}-d vectors "
            f"({'a stored object' if stored is not None else 'its description'} says so) but the "
            f"embedding backend makes {dim}-d vectors; use another collection name "
            "(LUPITA_WEAVIATE_CONVERSATION_COLLECTION / LUPITA_WEAVIATE_UTTERANCE_COLLECTION) "
            "or re-embed into a new collection",
            store=STORE, operation="ensure_collections",
        )
    have = {p.name: p for p in config.properties}
    for prop in props:
        current = have.get(prop.name)
        if current is None:
            collection.config.add_property(prop)
            log.info(
                "weaviate property added",
                extra={"stage": "sink", "collection": name, "property": prop.name},
            )
        elif current.data_type != prop.dataType:
            raise SchemaMismatch(
                f"{STORE}: collection {name} property {prop.name} is {current.data_type.value}, "
                f"expected {prop.dataType.value}", store=STORE, operation="ensure_collections",
            )
    if recorded is None:
        collection.config.update(description=((config.description or "") + f" [lupita vector_dim={dim}]").strip())


class _RedactBatchErrors(logging.Filter):
    """The client logs failed batch objects WITH their properties (transcript text, hashes);
    the sink raises its own bounded error instead, so those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, dict) and "errors" in record.msg)


_redaction_installed = False


def _install_log_redaction() -> None:
    global _redaction_installed
    if not _redaction_installed:
        logging.getLogger("weaviate-client").addFilter(_RedactBatchErrors())
        _redaction_installed = True
