"""The end of a call (:func:`finish_call`) without any server: it is handed the stores, so the
core's own decisions are checked here with stand-ins that record what they were asked to write.
(The stores themselves are tested against real Postgres and Weaviate in tests/stream_processor/stores/,
and the whole path in test_understanding_core.py and the end-to-end test.)"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import numpy as np
import pytest

from stream_processor.contracts import Utterance
from stream_processor.models.analyzer.local import LocalAnalyzer
from stream_processor.stages.understanding.alerts import AlertDetector
from stream_processor.stages.understanding.core import CallUnderstanding, UnderstandingServices, finish_call
from stream_processor.stores.postgres import AnalysisWrite
from stream_processor.stores.weaviate import SimilarCall

STARTED_US = int(datetime(2026, 2, 3, 15, 30, tzinfo=timezone.utc).timestamp() * 1e6)
LINES = [
    ("lupita", "Buenos días, doña Carmen. ¿Cómo amaneció hoy?"),
    ("person", "Pues aquí ando, un poco triste. Mi hijo Miguel se fue al norte."),
    ("lupita", "¿Ya se tomó su pastilla de hoy?"),
    ("person", "Sí, tomo metformina en la mañana porque tengo diabetes."),
]


class Embedder:
    """A deterministic 8-d embedder (the real ones are tested in tests/stream_processor/models)."""

    dim = 8

    def embed(self, texts):
        return np.array([[len(t) % 7 + 1, len(t.split()), 1, 0, 0, 0, 0, 1] for t in texts], dtype=np.float32)


class Weaviate:
    def __init__(self, log):
        self.log = log

    def ensure_collections(self, dim):
        self.log.append(("weaviate.ensure_collections", dim))

    def write_call(self, doc, vector, utterances, vectors):
        self.log.append(("weaviate.write_call", doc, list(vector), list(utterances), vectors))
        self.doc = doc
        return uuid.uuid5(uuid.NAMESPACE_URL, doc.call_id)

    def similar_calls(self, vector, *, phone_number_hash=None, limit=4):
        self.log.append(("weaviate.similar_calls", list(vector), phone_number_hash, limit))
        return [SimilarCall(self.doc.call_id, uuid.uuid5(uuid.NAMESPACE_URL, self.doc.call_id), 0.0,
                            self.doc.properties())]

    def close(self):
        pass


class Postgres:
    def __init__(self, log):
        self.log = log

    def write_call_analysis(self, call_id, analysis, transcript, utterances, weaviate_id, phone_hash, *,
                            observed_at, conversation, past):
        self.log.append(("postgres.write_call_analysis", call_id, analysis, transcript, list(utterances),
                         weaviate_id, phone_hash, observed_at, conversation, past))
        return AnalysisWrite("inserted", len(utterances), 0)

    def close(self):
        pass


def services(log):
    return UnderstandingServices(analyzer=LocalAnalyzer(), embedder=Embedder(), weaviate=Weaviate(log),
                                 postgres=Postgres(log), detector=AlertDetector(), legal_bucket="legal")


def call(call_id, lines, *, consent=True):
    svc = services([])
    cu = CallUnderstanding(call_id)
    cu.start(started_at_us=STARTED_US, phone_hash="ab" * 32, region="oaxaca", consent=consent, detector=svc.detector)
    t = 0.5
    for seq, (leg, text) in enumerate(lines):
        cu.on_final(Utterance(call_id, leg, seq, t, t + 3.0, text, 0.9), svc.detector, svc.sentiment_of)
        t += 3.5
    cu.end(STARTED_US + 20_000_000)
    return cu


def test_a_call_is_analysed_embedded_and_stored_weaviate_first_then_postgres():
    log = []
    cu = call("call-finish-1", LINES)
    result = finish_call(cu, services(log))
    assert [e[0] for e in log] == ["weaviate.ensure_collections", "weaviate.write_call", "weaviate.similar_calls",
                                   "postgres.write_call_analysis"]
    _, doc, vector, utts, vectors = log[1]
    # the person's nearest calls, asked with the call's own vector and the person's hash, go to Postgres
    assert log[2][1:] == (vector, "ab" * 32, 16)
    [item] = log[3][9]
    assert item["call_id"] == "call-finish-1" and item["phone_number_hash"] == "ab" * 32
    assert item["started_at"] == "2026-02-03T15:30:00+00:00" and item["distance"] == 0.0
    assert doc.call_id == "call-finish-1" and doc.s3_uri == result.s3_uri
    assert result.s3_uri.startswith("s3://legal/calls/2026/02/03/call-finish-1/")
    assert len(vector) == 8 and abs(np.linalg.norm(vector) - 1.0) < 1e-5  # the call vector, normalised
    assert len(utts) == len(vectors) == 4
    pg = log[3]
    assert pg[1] == "call-finish-1" and pg[5] == result.weaviate_id and pg[6] == "ab" * 32
    assert "metformina" in pg[3]  # the transcript handed to Postgres
    assert result.utterances == 4 and result.vector_dim == 8 and result.analysis.call_id == "call-finish-1"


def test_a_call_without_utterances_gets_its_postgres_analysis_but_no_weaviate_object():
    log = []
    result = finish_call(call("call-finish-2", []), services(log))
    assert [e[0] for e in log] == ["postgres.write_call_analysis"]
    assert result.weaviate_id is None and result.vector_dim is None and log[0][5] is None and log[0][9] is None


def test_finishing_again_hands_the_stores_the_same_writes():
    first, second = [], []
    cu = call("call-finish-3", LINES)
    finish_call(cu, services(first))
    finish_call(CallUnderstanding.from_dict(cu.to_dict()), services(second))
    assert [e[:2] for e in first] == [e[:2] for e in second]
    assert first[3][2:] == second[3][2:]  # same analysis, transcript, utterances, ids


def test_a_call_without_recording_consent_is_refused_before_any_write():
    log = []
    with pytest.raises(ValueError, match="no recording consent"):
        finish_call(call("call-finish-4", LINES, consent=False), services(log))
    assert log == []


@pytest.mark.parametrize("value", ["-1", "101", "sixteen"])
def test_past_candidates_out_of_range_is_refused_by_name(monkeypatch, value):
    from pydantic import ValidationError
    from stream_processor.stages.understanding.settings import UnderstandingSettings

    monkeypatch.setenv("LUPITA_UNDERSTANDING_PAST_CANDIDATES", value)
    with pytest.raises(ValidationError, match="understanding_past_candidates"):
        UnderstandingSettings()
