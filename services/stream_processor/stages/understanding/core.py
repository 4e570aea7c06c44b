"""One call's understanding, start to finish: plain synchronous code, no Kafka.

The Faust agent (:mod:`.agent`) and ``lupita replay`` drive the same
:class:`CallUnderstanding`::

    cu = CallUnderstanding(call_id)
    cu.start(started_at_us=..., phone_hash=..., region=..., consent=True)   # CallStarted
    hits = cu.on_final(utterance, services)        # each final transcript with text -> new alerts
    cu.end(ended_at_us)                            # CallEnded
    result = finish_call(cu, services)             # analyzer -> embedder -> Weaviate -> Postgres

What it holds (all JSON-able, :meth:`CallUnderstanding.to_dict` / :meth:`from_dict`, so a
changelog-backed Faust table can carry it): the :class:`~.conversation.ConversationState`
(utterances, talk time, turns, running sentiment), the cue ids already raised (an alert is
raised once per (call, cue)), and the call's metadata from its lifecycle events (phone hash,
region, start and end, recording consent).

:func:`finish_call` writes Weaviate first (the ``LupitaConversation`` object with
the call vector and the legal WAV's ``s3_uri``, plus one ``LupitaUtterance`` per utterance),
then Postgres (``companion_calls`` analysis columns with the ``weaviate_id``, ``call_utterances``,
``user_facts``, and the person's calls nearest to this one — a Weaviate query filtered on the
person's hash, right after the write — in ``person_past_conversations``, which the context API reads
instead of asking Weaviate per request), so ``companion_calls.processed_at`` means "everything of this call is stored".
Every write is an upsert on a natural key and the local analyzer and embedder are
deterministic: running ``finish`` again (redelivery, crash, replay) changes nothing. A store
that stays down raises :class:`~stream_processor.stores.SinkUnavailable` after the sinks' bounded retries; the
caller tries the whole ``finish`` again later.

Blank finals (the ASR guards removed everything) are not utterances: they are counted by the
caller and neither analysed, embedded nor stored. A call without any utterance gets its
Postgres analysis (empty transcript, ``neutral``) but no Weaviate object (there is no vector to
store), so ``weaviate_id`` stays NULL.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from stream_processor.stages.understanding.alerts import AlertDetector
from stream_processor.stores.archive import call_keys
from stream_processor.records import is_valid_call_id
from stream_processor.stages.understanding.conversation import ConversationState
from stream_processor.models.embeddings.base import call_vector
from stream_processor.stores import ConversationDoc, s3_uri
from stream_processor.stores.postgres import AnalysisWrite
from stream_processor.stages.understanding.settings import UnderstandingSettings
from stream_processor.contracts import AlertHit, CallAnalysis, Utterance

log = logging.getLogger(__name__)

PERSON = "person"
# Emotions of the analyzer's lexicon that count as positive / negative for the running sentiment.
POSITIVE_EMOTIONS = frozenset({"alegria"})
NEGATIVE_EMOTIONS = frozenset({"tristeza", "miedo", "enojo", "soledad"})


# ------------------------------------------------------------------------------------------ services


class UnderstandingServices:
    """The models and stores ``finish`` uses, built once per worker. Thread-safe."""

    def __init__(self, *, analyzer: Any, embedder: Any, weaviate: Any, postgres: Any,
                 detector: AlertDetector, legal_bucket: str, past_candidates: int = 16) -> None:
        self.analyzer = analyzer
        self.past_candidates = past_candidates
        self.embedder = embedder
        self.weaviate = weaviate
        self.postgres = postgres
        self.detector = detector
        self.legal_bucket = legal_bucket
        self._ready = False
        self._lock = threading.Lock()
        self._emotions = None

    @classmethod
    def from_settings(cls, settings: UnderstandingSettings, *, stop: threading.Event | None = None,
                      embedder: Any = None) -> "UnderstandingServices":
        """Load the models (the catalogues are validated here, at start-up) and open the sinks
        (connections open on first use)."""
        from stream_processor.models.analyzer.factory import build_analyzer
        from stream_processor.models.embeddings.factory import build_embedder
        from stream_processor.stores import PostgresSink, WeaviateSink

        emb = embedder or build_embedder(settings)
        return cls(
            analyzer=build_analyzer(settings, embedder=emb),
            embedder=emb,
            weaviate=WeaviateSink.from_settings(settings, stop=stop),
            postgres=PostgresSink.from_settings(settings, stop=stop),
            detector=AlertDetector.from_settings(settings),
            legal_bucket=settings.s3_legal_bucket,
            past_candidates=settings.understanding_past_candidates,
        )

    def ensure_ready(self) -> None:
        """Weaviate collections for the embedder's vector size (once; refuses another size)."""
        with self._lock:
            if not self._ready:
                self.weaviate.ensure_collections(int(self.embedder.dim))
                self._ready = True

    def sentiment_of(self, text: str) -> float:
        """A score in [-1, 1] from the analyzer's emotion lexicon (positive - negative share)."""
        if self._emotions is None:
            from stream_processor.models.analyzer.local import LocalAnalyzer

            local = getattr(self.analyzer, "fallback", None) or self.analyzer
            self._emotions = local if isinstance(local, LocalAnalyzer) else LocalAnalyzer()
        scores = self._emotions.emotion_scores(text)
        pos = sum(v for k, v in scores.items() if k in POSITIVE_EMOTIONS)
        neg = sum(v for k, v in scores.items() if k in NEGATIVE_EMOTIONS)
        return 0.0 if pos + neg <= 0 else (pos - neg) / (pos + neg)

    def close(self) -> None:
        for thing in (self.weaviate, self.postgres, self.analyzer):
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - closing must not mask anything
                log.debug("close failed", exc_info=True)


# ------------------------------------------------------------------------------------------ one call


@dataclass(frozen=True)
class FinishResult:
    analysis: CallAnalysis
    weaviate_id: str | None  # None: no utterance, so no Weaviate object
    postgres: AnalysisWrite
    s3_uri: str | None
    utterances: int
    vector_dim: int | None


def _utc(us: int | None) -> datetime | None:
    return None if not us else datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


@dataclass
class CallUnderstanding:
    """The understanding state of one call; see the module docstring."""

    call_id: str
    conversation: ConversationState | None = None
    alerts_seen: set[str] = field(default_factory=set)
    consent: bool | None = None  # None: CallStarted not seen yet
    phone_hash: str | None = None
    region: str | None = None
    started_at_us: int | None = None
    ended_at_us: int | None = None
    blank_finals: int = 0

    def __post_init__(self) -> None:
        if not is_valid_call_id(self.call_id):
            raise ValueError(f"invalid call id {self.call_id!r}")
        if self.conversation is None:
            self.conversation = ConversationState(self.call_id)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, *, started_at_us: int, phone_hash: str | None, region: str | None, consent: bool,
              detector: AlertDetector | None = None) -> list[AlertHit]:
        """Apply CallStarted. Returns the alerts of person utterances that arrived before it (their
        consent was unknown then); none without consent."""
        self.consent = bool(consent)
        self.started_at_us = int(started_at_us) or None
        self.phone_hash = phone_hash or None
        self.region = region or None
        if not self.consent:
            self.conversation = ConversationState(self.call_id)  # nothing derived is kept
            return []
        hits: list[AlertHit] = []
        if detector is not None:
            for u in self.utterances():
                if u.leg == PERSON:
                    hits.extend(detector.scan(u, self.alerts_seen))
        return hits

    def end(self, ended_at_us: int) -> None:
        self.ended_at_us = int(ended_at_us) or None

    def on_final(self, utt: Utterance, detector: AlertDetector, sentiment_of: Any = None, *,
                 words: Any = None) -> list[AlertHit]:
        """Add a final utterance; returns the alerts it raises (person leg, cue not yet raised
        in this call). A repeated (leg, seq) or a blank text changes nothing and raises nothing;
        a call without consent keeps nothing. ``words``: the transcript's ``(word, probability)``
        pairs, so a cue resting on a doubtful word is raised ``to_verify`` (see
        :meth:`AlertDetector.scan`); without them the utterance's confidence stands for every word."""
        if self.consent is False:
            return []
        if not utt.text.strip():
            self.blank_finals += 1
            return []
        assert self.conversation is not None
        if not self.conversation.add(utt, sentiment_of, words=words):
            return []
        if self.consent is None or utt.leg != PERSON:
            return []
        return detector.scan(utt, self.alerts_seen, words=words)

    # -- derived -------------------------------------------------------------------------------

    def utterances(self) -> list[Utterance]:
        assert self.conversation is not None
        return [
            Utterance(self.call_id, u["leg"], int(u["seq"]), float(u["start_s"]), float(u["end_s"]), u["text"],
                      float(u.get("confidence", 1.0)))
            for u in self.conversation.ordered() if str(u["text"]).strip()
        ]

    def duration_seconds(self) -> float | None:
        if self.started_at_us and self.ended_at_us and self.ended_at_us >= self.started_at_us:
            return (self.ended_at_us - self.started_at_us) / 1e6
        utts = self.utterances()
        return max(u.end_s for u in utts) if utts else None

    def s3_uri(self, legal_bucket: str) -> str | None:
        """Where the recorder puts the call's legal WAV (None until the start is known)."""
        started = _utc(self.started_at_us)
        return None if started is None else s3_uri(legal_bucket, call_keys(self.call_id, started).audio)

    # -- table form ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        assert self.conversation is not None
        return {
            "call_id": self.call_id, "conversation": self.conversation.to_dict(),
            "alerts_seen": sorted(self.alerts_seen), "consent": self.consent, "phone_hash": self.phone_hash,
            "region": self.region, "started_at_us": self.started_at_us, "ended_at_us": self.ended_at_us,
            "blank_finals": self.blank_finals,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CallUnderstanding":
        conv = data.get("conversation")
        return cls(
            call_id=data["call_id"],
            conversation=ConversationState.from_dict(conv) if conv else None,
            alerts_seen=set(data.get("alerts_seen") or ()),
            consent=data.get("consent"),
            phone_hash=data.get("phone_hash"),
            region=data.get("region"),
            started_at_us=data.get("started_at_us"),
            ended_at_us=data.get("ended_at_us"),
            blank_finals=int(data.get("blank_finals") or 0),
        )


# ------------------------------------------------------------------------------------------ the end of a call


def past_item(hit: Any) -> dict[str, Any]:
    """A :class:`~stream_processor.stores.weaviate.SimilarCall` as ``person_past_conversations``
    keeps it (the fields the context API's past conversations show, JSON)."""
    p = hit.properties
    started = p.get("started_at")
    return {"call_id": hit.call_id, "weaviate_id": str(hit.uuid), "phone_number_hash": p.get("phone_number_hash"),
            "summary": p.get("summary") or "", "topics": list(p.get("topics") or []),
            "emotion": p.get("emotion") or "",
            "started_at": started.isoformat() if isinstance(started, datetime) else started,
            "distance": hit.distance}


def finish_call(cu: CallUnderstanding, services: UnderstandingServices) -> FinishResult:
    """Finish a call: analyse, embed, store (Weaviate, then Postgres) with the models and stores
    ``services`` holds (passed in: the function has none of its own). Idempotent. Raises the
    stores' errors (:class:`~stream_processor.stores.SinkUnavailable`: try again later;
    :class:`~stream_processor.stores.SinkRejected`: not)."""
    if cu.consent is False:
        raise ValueError(f"call {cu.call_id}: no recording consent, nothing may be derived")
    utts = cu.utterances()
    assert cu.conversation is not None
    analysis = services.analyzer.analyze(cu.call_id, utts, words=cu.conversation.words())
    uri = cu.s3_uri(services.legal_bucket)
    started = _utc(cu.started_at_us)
    weaviate_id: str | None = None
    dim: int | None = None
    past: list[dict[str, Any]] | None = None
    if utts:
        vectors = np.asarray(services.embedder.embed([u.text for u in utts]), dtype=np.float32)
        weights = np.array([max(u.end_s - u.start_s, 0.0) for u in utts])
        if not (weights > 0).any():
            weights = np.ones(len(utts))
        vec = call_vector(vectors, weights)
        dim = int(vec.shape[0])
        services.ensure_ready()
        doc = ConversationDoc.from_analysis(
            analysis, s3_uri=uri, phone_number_hash=cu.phone_hash,
            duration_seconds=cu.duration_seconds(), region=cu.region, started_at=started,
        )
        weaviate_id = str(services.weaviate.write_call(doc, vec.tolist(), utts, vectors.tolist()))
        if cu.phone_hash and services.past_candidates > 0:
            # the person's calls nearest to this one: what the context API shows as relevant past
            # conversations until the person's next call is analysed (stored with the analysis)
            past = [past_item(s) for s in services.weaviate.similar_calls(
                vec.tolist(), phone_number_hash=cu.phone_hash, limit=services.past_candidates)]
    assert cu.conversation is not None
    write = services.postgres.write_call_analysis(
        cu.call_id, analysis, cu.conversation.transcript(), utts, weaviate_id, cu.phone_hash,
        observed_at=started, conversation=cu.conversation.summary(), past=past,
    )
    return FinishResult(analysis, weaviate_id, write, uri, len(utts), dim)
