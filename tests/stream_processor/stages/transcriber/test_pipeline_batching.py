"""The transcriber stage alone in a real ``lupita worker`` (LUPITA_STAGES=transcriber) on the real
Kafka with batched decodes on (``LUPITA_ASR_BATCH_MAX_WINDOWS=4``) and one decode thread: two
calls' closed segments are produced at once, as a backlog, so finals of several legs and of both
calls wait together and are decoded in one batched call, each its own row.

What is asserted holds for any voice: every segment gets exactly one final, in its own call, leg
and segment, in the leg's order, after any partial of it; its words are in call time inside its
own segment; a word distinctive of one call is never heard in the other call's transcripts; some
decodes were batched. Which words Whisper hears is measured by the benchmarks, not asserted here.
"""

from __future__ import annotations

import uuid

import pytest
from backlog import (
    assert_no_partial_after_its_final, assert_one_final_per_segment, call_segments, transcribe_backlog,
    transcriber_worker,
)
from kafka_io import own_topics

from lupita.v1 import audio_pb2
from stream_processor.models.asr.guards import normalize_text

pytestmark = pytest.mark.stack

ENV = {
    "LUPITA_STAGES": "transcriber",
    "LUPITA_ASR_THREADS": "1",
    "LUPITA_TRANSCRIBER_THREADS": "1",
    "LUPITA_ASR_BATCH_MAX_WINDOWS": "4",
}
# two calls, each with its own words: (leg -> sentences), and the words only that call says
CALLS = (
    ({audio_pb2.LEG_LUPITA: ("Buenos días, ¿cómo amaneció hoy?", "¿Ya tomó su pastilla de la presión?"),
      audio_pb2.LEG_PERSON: ("Mi nieto Rodrigo vive en Guadalajara.", "Hoy compré tortillas y naranjas.")},
     ("rodrigo", "guadalajara", "tortillas", "naranjas", "pastilla", "presion")),
    ({audio_pb2.LEG_LUPITA: ("¿Qué hizo el fin de semana?", "Qué bonito paseo."),
      audio_pb2.LEG_PERSON: ("Fuimos al parque con los perros.", "El doctor me cambió la medicina del corazón.")},
     ("parque", "perros", "doctor", "medicina", "corazon", "paseo")),
)


@pytest.fixture(scope="module")
def own(stack_env):
    return own_topics(stack_env["LUPITA_TOPIC_PREFIX"], "asrbatch")


@pytest.fixture(scope="module")
def worker(stack_env, tmp_path_factory, own):
    with transcriber_worker(tmp_path_factory, own[0], "asrbatch", ENV) as w:
        yield w


@pytest.fixture(scope="module")
def result(worker, own):
    ids = [f"asrbatch-{uuid.uuid4().hex[:8]}" for _ in CALLS]
    segs = {cid: call_segments(cid, turns) for cid, (turns, _) in zip(ids, CALLS)}
    sum0 = worker.metric("lupita_transcriber_batch_requests_sum")
    count0 = worker.metric("lupita_transcriber_batch_requests_count")
    events = transcribe_backlog(own[0], segs)
    batched = (worker.metric("lupita_transcriber_batch_requests_sum") - sum0,
               worker.metric("lupita_transcriber_batch_requests_count") - count0)
    return ids, segs, events, batched


def test_every_segment_gets_one_final_in_its_call_leg_and_order(result):
    ids, segs, events, _ = result
    for (turns, _), cid in zip(CALLS, ids):
        assert_one_final_per_segment(cid, turns, segs[cid], events[cid])


def test_a_partial_never_follows_its_final(result):
    ids, _, events, _ = result
    for cid in ids:
        assert_no_partial_after_its_final(events[cid])


def test_no_word_of_one_call_is_heard_in_the_other(result):
    ids, _, events, _ = result
    for k, cid in enumerate(ids):
        heard = " ".join(f" {normalize_text(e.text)} " for e in events[cid] if not e.is_partial)
        for j, (_, words) in enumerate(CALLS):
            if j != k:
                for word in words:
                    assert f" {word} " not in heard, (word, cid, heard)


def test_the_backlog_was_decoded_in_batches(result):
    ids, _, events, (requests, batches) = result
    assert batches >= 1 and requests > batches  # at least one batch held two or more finals
    assert any("batched" in e.guard_actions or "batch_redecode" in e.guard_actions
               for cid in ids for e in events[cid] if not e.is_partial)
