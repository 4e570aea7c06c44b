"""The transcriber stage alone in a real ``lupita worker`` (LUPITA_STAGES=transcriber) on the real
Kafka with packing on (``LUPITA_ASR_PACK_MAX_SECONDS=30``) and one decode thread: a two-leg call's
closed segments are produced all at once, as a backlog, so the finals of a leg wait together and
are decoded in shared windows, the person's before the agent's.

What is asserted holds for any voice: every segment gets exactly one final, in its own leg and
segment, in the leg's order, after any partial of it; its words are in call time inside its own
segment; some finals were decoded packed; nothing was dropped. Which words Whisper hears is
measured by the benchmarks, not asserted here.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from kafka_io import TopicReader, own_topics, produce, transcripts_of
from procs import start_worker, stop_worker

from loadgen.synth import DEFAULT_VOICES, LUPITA, PERSON, synthesize_utterance
from lupita.v1 import audio_pb2, events_pb2

pytestmark = pytest.mark.stack

RATE = 8000
FINAL, PARTIAL, END = (events_pb2.SEGMENT_KIND_FINAL, events_pb2.SEGMENT_KIND_PARTIAL,
                       events_pb2.SEGMENT_KIND_END_OF_LEG)
ENV = {
    "LUPITA_STAGES": "transcriber",
    "LUPITA_ASR_THREADS": "1",
    "LUPITA_TRANSCRIBER_THREADS": "1",
    "LUPITA_ASR_PACK_MAX_SECONDS": "30",
    "LUPITA_ASR_PACK_GAP_SECONDS": "1.0",
}
TURNS = {  # leg -> its segments' sentences, in order
    audio_pb2.LEG_LUPITA: ("Buenos días, ¿cómo amaneció hoy?", "¿Ya tomó su pastilla de la presión?",
                           "Qué bueno. ¿Y quién vino a verla?"),
    audio_pb2.LEG_PERSON: ("Amanecí bien, gracias a Dios.", "Sí, me la tomé con el desayuno.",
                           "Vino mi hija Teresa con los niños.", "Hicimos mole para la comida."),
}
VOICE = {audio_pb2.LEG_LUPITA: DEFAULT_VOICES[LUPITA], audio_pb2.LEG_PERSON: DEFAULT_VOICES[PERSON]}
PAD_S = 0.3


@pytest.fixture(scope="module")
def own(stack_env):
    return own_topics(stack_env["LUPITA_TOPIC_PREFIX"], "asrpack")


@pytest.fixture(scope="module")
def worker(stack_env, tmp_path_factory, own):
    settings = own[0]
    w = start_worker(tmp_path_factory.mktemp("asrpack-worker"), f"asrpack-test-{uuid.uuid4().hex[:8]}",
                     env_extra={**ENV, "LUPITA_TOPIC_PREFIX": settings.topic_prefix})
    try:
        yield w
    finally:
        stop_worker(w)


def call_segments(call_id: str) -> list[events_pb2.SpeechSegment]:
    """The call's closed segments (the legs alternate in call time), then END_OF_LEG per leg; one
    partial snapshot of the person's last segment before its final (the partial -> final contract)."""
    pad = np.zeros(int(PAD_S * RATE), np.int16)
    out: list[events_pb2.SpeechSegment] = []
    t = 0.5
    order = [(leg, i) for i in range(4) for leg in (audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON)
             if i < len(TURNS[leg])]
    for leg, i in order:
        audio = np.concatenate([pad, synthesize_utterance(TURNS[leg][i], RATE, VOICE[leg]), pad])
        start_us, end_us = int(t * 1e6), int((t + audio.size / RATE) * 1e6)
        common = dict(call_id=call_id, leg=leg, seq=i, start_us=start_us, sample_rate_hz=RATE,
                      call_started_at_us=1_764_000_000_000_000)
        if leg == audio_pb2.LEG_PERSON and i == len(TURNS[leg]) - 1:
            half = audio[: audio.size // 2]
            out.append(events_pb2.SpeechSegment(**common, end_us=start_us + int(half.size / RATE * 1e6),
                                                pcm16=half.astype("<i2").tobytes(), kind=PARTIAL, revision=0))
        out.append(events_pb2.SpeechSegment(**common, end_us=end_us, pcm16=audio.astype("<i2").tobytes(),
                                            kind=FINAL, revision=1))
        t += audio.size / RATE + 0.4
    for leg in TURNS:
        out.append(events_pb2.SpeechSegment(call_id=call_id, leg=leg, seq=len(TURNS[leg]), kind=END,
                                            call_started_at_us=1_764_000_000_000_000))
    return out


@pytest.fixture(scope="module")
def result(worker, own):
    from lupita.topics import SPEECH_SEGMENTS, TRANSCRIPTS

    settings = own[0]
    call_id = f"asrpack-{uuid.uuid4().hex[:8]}"
    segs = call_segments(call_id)
    packed0 = worker.metric("lupita_transcriber_packed_segments_total")
    produce(settings.kafka_bootstrap,
            [(settings.topic(SPEECH_SEGMENTS), call_id.encode(), s.SerializeToString()) for s in segs])
    with TopicReader(settings.kafka_bootstrap, settings.topic(TRANSCRIPTS)) as trans:
        trans.wait(f"the transcripts of {call_id}",
                   lambda: sum(e.leg_complete for e in transcripts_of(trans, call_id)) >= 2, timeout=480)
        events = transcripts_of(trans, call_id)
    return segs, events, worker.metric("lupita_transcriber_packed_segments_total") - packed0


def test_every_segment_gets_one_final_in_its_leg_and_order(result):
    segs, events, _ = result
    for leg, sentences in TURNS.items():
        finals = [e for e in events if e.leg == leg and not e.is_partial and not e.leg_complete]
        assert [e.seq for e in finals] == list(range(len(sentences)))  # once each, in the leg's order
        by_seq = {s.seq: s for s in segs if s.leg == leg and s.kind == FINAL}
        for e in finals:
            s = by_seq[e.seq]
            assert e.text.strip() and e.words, (leg, e.seq, list(e.guard_actions))
            assert (e.segment_start_us, e.segment_end_us) == (s.start_us, s.end_us)
            for w in e.words:  # call time, inside its own segment
                assert s.start_us <= w.start_us <= w.end_us <= s.end_us
        complete = [i for i, e in enumerate(events) if e.leg == leg and e.leg_complete]
        assert len(complete) == 1
        assert all(i < complete[0] for i, e in enumerate(events) if e.leg == leg and not e.leg_complete)


def test_a_partial_never_follows_its_final(result):
    _, events, _ = result
    for i, e in enumerate(events):
        if e.is_partial:
            assert not any((f.leg, f.seq) == (e.leg, e.seq) and not f.is_partial for f in events[:i])


def test_the_backlog_was_decoded_in_shared_windows(result):
    _, events, packed = result
    assert packed >= 2  # at least one window held two finals
    assert any("packed" in e.guard_actions for e in events if not e.is_partial)
