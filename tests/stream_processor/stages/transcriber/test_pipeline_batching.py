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

import numpy as np
import pytest
from kafka_io import TopicReader, own_topics, produce, transcripts_of
from procs import start_worker, stop_worker

from loadgen.synth import DEFAULT_VOICES, LUPITA, PERSON, synthesize_utterance
from lupita.v1 import audio_pb2, events_pb2
from stream_processor.models.asr.guards import normalize_text

pytestmark = pytest.mark.stack

RATE = 8000
FINAL, PARTIAL, END = (events_pb2.SEGMENT_KIND_FINAL, events_pb2.SEGMENT_KIND_PARTIAL,
                       events_pb2.SEGMENT_KIND_END_OF_LEG)
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
VOICE = {audio_pb2.LEG_LUPITA: DEFAULT_VOICES[LUPITA], audio_pb2.LEG_PERSON: DEFAULT_VOICES[PERSON]}
PAD_S = 0.3


@pytest.fixture(scope="module")
def own(stack_env):
    return own_topics(stack_env["LUPITA_TOPIC_PREFIX"], "asrbatch")


@pytest.fixture(scope="module")
def worker(stack_env, tmp_path_factory, own):
    settings = own[0]
    w = start_worker(tmp_path_factory.mktemp("asrbatch-worker"), f"asrbatch-test-{uuid.uuid4().hex[:8]}",
                     env_extra={**ENV, "LUPITA_TOPIC_PREFIX": settings.topic_prefix})
    try:
        yield w
    finally:
        stop_worker(w)


def call_segments(call_id: str, turns: dict) -> list[events_pb2.SpeechSegment]:
    """The call's closed segments (the legs alternate in call time), then END_OF_LEG per leg; one
    partial snapshot of the person's last segment before its final (the partial -> final contract)."""
    pad = np.zeros(int(PAD_S * RATE), np.int16)
    out: list[events_pb2.SpeechSegment] = []
    t = 0.5
    order = [(leg, i) for i in range(2) for leg in (audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON)]
    for leg, i in order:
        audio = np.concatenate([pad, synthesize_utterance(turns[leg][i], RATE, VOICE[leg]), pad])
        start_us, end_us = int(t * 1e6), int((t + audio.size / RATE) * 1e6)
        common = dict(call_id=call_id, leg=leg, seq=i, start_us=start_us, sample_rate_hz=RATE,
                      call_started_at_us=1_764_000_000_000_000)
        if leg == audio_pb2.LEG_PERSON and i == 1:
            half = audio[: audio.size // 2]
            out.append(events_pb2.SpeechSegment(**common, end_us=start_us + int(half.size / RATE * 1e6),
                                                pcm16=half.astype("<i2").tobytes(), kind=PARTIAL, revision=0))
        out.append(events_pb2.SpeechSegment(**common, end_us=end_us, pcm16=audio.astype("<i2").tobytes(),
                                            kind=FINAL, revision=1))
        t += audio.size / RATE + 0.4
    for leg in turns:
        out.append(events_pb2.SpeechSegment(call_id=call_id, leg=leg, seq=2, kind=END,
                                            call_started_at_us=1_764_000_000_000_000))
    return out


@pytest.fixture(scope="module")
def result(worker, own):
    from lupita.topics import SPEECH_SEGMENTS, TRANSCRIPTS

    settings = own[0]
    ids = [f"asrbatch-{uuid.uuid4().hex[:8]}" for _ in CALLS]
    segs = {cid: call_segments(cid, turns) for cid, (turns, _) in zip(ids, CALLS)}
    sum0 = worker.metric("lupita_transcriber_batch_requests_sum")
    count0 = worker.metric("lupita_transcriber_batch_requests_count")
    records = [(settings.topic(SPEECH_SEGMENTS), cid.encode(), s.SerializeToString())
               for cid in ids for s in segs[cid]]
    produce(settings.kafka_bootstrap, records)
    with TopicReader(settings.kafka_bootstrap, settings.topic(TRANSCRIPTS)) as trans:
        for cid in ids:
            trans.wait(f"the transcripts of {cid}",
                       lambda cid=cid: sum(e.leg_complete for e in transcripts_of(trans, cid)) >= 2, timeout=480)
        events = {cid: transcripts_of(trans, cid) for cid in ids}
    batched = (worker.metric("lupita_transcriber_batch_requests_sum") - sum0,
               worker.metric("lupita_transcriber_batch_requests_count") - count0)
    return ids, segs, events, batched


def test_every_segment_gets_one_final_in_its_call_leg_and_order(result):
    ids, segs, events, _ = result
    for cid in ids:
        for leg in (audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON):
            finals = [e for e in events[cid] if e.leg == leg and not e.is_partial and not e.leg_complete]
            assert [e.seq for e in finals] == [0, 1]  # once each, in the leg's order
            by_seq = {s.seq: s for s in segs[cid] if s.leg == leg and s.kind == FINAL}
            for e in finals:
                s = by_seq[e.seq]
                assert e.call_id == cid and e.text.strip() and e.words, (cid, leg, e.seq, list(e.guard_actions))
                assert (e.segment_start_us, e.segment_end_us) == (s.start_us, s.end_us)
                for w in e.words:  # call time, inside its own segment
                    assert s.start_us <= w.start_us <= w.end_us <= s.end_us
            complete = [i for i, e in enumerate(events[cid]) if e.leg == leg and e.leg_complete]
            assert len(complete) == 1
            assert all(i < complete[0] for i, e in enumerate(events[cid]) if e.leg == leg and not e.leg_complete)


def test_a_partial_never_follows_its_final(result):
    ids, _, events, _ = result
    for cid in ids:
        for i, e in enumerate(events[cid]):
            if e.is_partial:
                assert not any((f.leg, f.seq) == (e.leg, e.seq) and not f.is_partial for f in events[cid][:i])


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
