"""vad + transcriber in a real ``lupita worker`` (LUPITA_STAGES=vad,transcriber) on the real Kafka,
with the local Whisper base model: a synthesised two-leg Spanish call in, ``transcripts`` out.

Whisper work is kept small: 8 kHz, short turns, the AsrSettings defaults (beam 5 for finals,
beam 1 for partials), one snapshot per long segment (``LUPITA_VAD_PARTIAL_AFTER_S=3``,
``..._EVERY_S=10``). Stale partials are not skipped here (``LUPITA_TRANSCRIBER_SKIP_STALE_PARTIALS
=false``). The whole call is published at once, far faster than real time, so its finals wait as a
backlog and the scheduler (person finals, agent finals, partials only while no final waits) may
refuse its partials: the partial -> final contract is checked on it (a partial, if any, precedes
its final), and a partial's publication on a lone segment whose final comes later, as in a live
call.

What is asserted holds for any voice: every voiced segment gets a non-empty final transcript in
its own leg and segment, with monotonic word timings in call time inside the segment. Which words
Whisper base hears depends on the voice (and on sampling at a fallback temperature): word accuracy
is measured by ``bench/asr_wer.py``, not asserted here.
"""

from __future__ import annotations

import uuid

import calls as sim
import pytest
from kafka_io import TopicReader, own_topics, produce, segment_of, segments_of, transcripts_of
from procs import start_worker, stop_worker

from lupita.v1 import events_pb2

pytestmark = pytest.mark.stack

FINAL, PARTIAL, END = (events_pb2.SEGMENT_KIND_FINAL, events_pb2.SEGMENT_KIND_PARTIAL,
                       events_pb2.SEGMENT_KIND_END_OF_LEG)
ENV = {
    "LUPITA_STAGES": "vad,transcriber",
    "LUPITA_VAD_GRACE_SECONDS": "2",
    "LUPITA_VAD_TICK_SECONDS": "0.25",
    "LUPITA_VAD_PARTIAL_AFTER_S": "3",
    "LUPITA_VAD_PARTIAL_EVERY_S": "10",
    "LUPITA_TRANSCRIBER_SKIP_STALE_PARTIALS": "false",
    "LUPITA_ASR_THREADS": "1",
}


@pytest.fixture(scope="module")
def own(stack_env):
    return own_topics(stack_env["LUPITA_TOPIC_PREFIX"], "asr")


@pytest.fixture(scope="module")
def settings(own):
    return own[0]


@pytest.fixture(scope="module")
def topics(own):
    return own[1]


@pytest.fixture(scope="module")
def worker(stack_env, tmp_path_factory, settings):
    w = start_worker(tmp_path_factory.mktemp("asr-worker"), f"asr-test-{uuid.uuid4().hex[:8]}",
                     env_extra={**ENV, "LUPITA_TOPIC_PREFIX": settings.topic_prefix})
    try:
        yield w
    finally:
        stop_worker(w)


@pytest.fixture(scope="module")
def readers(settings):
    from lupita.topics import SPEECH_SEGMENTS, TRANSCRIPTS

    segs = TopicReader(settings.kafka_bootstrap, settings.topic(SPEECH_SEGMENTS))
    trans = TopicReader(settings.kafka_bootstrap, settings.topic(TRANSCRIPTS))
    yield segs, trans
    segs.close()
    trans.close()


def legs_complete(reader, call_id):
    return lambda: sum(e.leg_complete for e in transcripts_of(reader, call_id)) >= 2


@pytest.fixture(scope="module")
def calls(worker, readers, settings, topics, tmp_path_factory):
    """Two calls: the two-leg script, and one whose person never speaks (only line noise)."""
    cache = tmp_path_factory.mktemp("synth")
    stereo, truth = sim.dialogue(cache_dir=cache)
    talk = sim.make_call(f"asr-talk-{uuid.uuid4().hex[:8]}", stereo, truth)
    quiet_audio, quiet_truth = sim.dialogue(sim.SCRIPT[:2], cache_dir=cache, silent_person=True, noise_dbfs=-50)
    quiet = sim.make_call(f"asr-quiet-{uuid.uuid4().hex[:8]}", quiet_audio, quiet_truth)
    produce(settings.kafka_bootstrap, talk.records(topics) + quiet.records(topics))
    _, trans = readers
    for call in (talk, quiet):
        trans.wait(f"the transcripts of {call.call_id}", legs_complete(trans, call.call_id), timeout=240)
    return talk, quiet


SLACK_S = 0.3  # the VAD pads each segment by its speech pad (and Silero ends up to ~150 ms late)


def assert_final_of_the_region(e, t_start: float, t_end: float) -> None:
    """A final transcript of the voiced region [t_start, t_end] s (call time): non-empty text in
    the segment that covers the region, monotonic word timings in call time inside the segment."""
    assert e.text.strip(), f"empty final for the voiced region {t_start:.2f}-{t_end:.2f} s"
    assert e.backend == "local" and e.language == "es" and 0 < e.confidence <= 1
    assert e.segment_start_us / 1e6 <= t_start + SLACK_S and t_end - SLACK_S <= e.segment_end_us / 1e6
    assert e.segment_end_us / 1e6 <= t_end + 1.0  # this turn's segment, not one spanning the next
    assert e.words, e.text
    for a, b in zip(e.words, e.words[1:]):
        assert a.start_us <= a.end_us <= b.start_us <= b.end_us
    # call time, not segment time: inside the segment (whose start is seconds into the call)
    assert e.segment_start_us <= e.words[0].start_us and e.words[-1].end_us <= e.segment_end_us


def test_every_voiced_segment_has_a_final_in_its_leg_with_word_timings_in_call_time(calls, readers):
    talk, _ = calls
    _, trans = readers
    events = transcripts_of(trans, talk.call_id)
    for leg in (sim.LUPITA, sim.PERSON):
        finals = sorted((e for e in events if e.leg == leg and not e.is_partial and not e.leg_complete),
                        key=lambda e: e.seq)
        # one final per voiced region of this leg's turns, in order
        assert [e.seq for e in finals] == list(range(len(talk.truth[leg])))
        for e, (t_start, t_end) in zip(finals, talk.truth[leg]):
            assert_final_of_the_region(e, t_start, t_end)


def test_partials_precede_the_final_of_a_long_segment(calls, readers, worker):
    talk, _ = calls
    segs, trans = readers
    events = transcripts_of(trans, talk.call_id)  # one call = one partition: in publication order
    long_leg, long_seq = sim.LUPITA, 1  # "Ya se tomó la pastilla ... esta mañana", ~4.6 s
    segs.poll()
    snapshots = [s for s in segments_of(segs, talk.call_id) if (s.leg, s.seq, s.kind) == (long_leg, long_seq, PARTIAL)]
    assert snapshots  # the vad took a snapshot of the open segment
    mine = [(i, e) for i, e in enumerate(events) if (e.leg, e.seq) == (long_leg, long_seq)]
    partials = [(i, e) for i, e in mine if e.is_partial]
    final = [(i, e) for i, e in mine if not e.is_partial]
    assert len(final) == 1
    if partials:  # published only if it was decoded before its final (no final waited)
        assert max(i for i, _ in partials) < final[0][0]
        assert all(e.text and not e.words for _, e in partials)  # a hypothesis, without word timings
        assert final[0][1].revision > max(e.revision for _, e in partials)
    else:  # refused or dropped by the scheduler, and counted
        refused = sum(worker.metric("lupita_transcriber_schedule_decisions_total", decision=d)
                      for d in ("partial_skipped", "partial_cancelled"))
        assert refused + worker.metric("lupita_transcriber_segments_total", kind="partial", outcome="stale") >= 1
    # the greetings (2-2.6 s) were never open long enough for a snapshot
    assert not [e for e in events if e.is_partial and e.seq == 0]


def test_a_partial_is_published_before_its_final_when_no_final_waits(calls, readers, settings):
    """As in a live call: the snapshot of an open segment arrives, nothing final waits, so it is
    decoded and published; the segment's final, which comes later, follows it."""
    from lupita.topics import SPEECH_SEGMENTS

    talk, _ = calls  # the backlog of the first calls is done (the fixture waited for it)
    segs, trans = readers
    segs.poll()
    source = {(s.kind): s for s in segments_of(segs, talk.call_id) if (s.leg, s.seq) == (sim.LUPITA, 1)}
    call_id = f"asr-live-{uuid.uuid4().hex[:8]}"

    def moved(seg, **kw):
        out = events_pb2.SpeechSegment()
        out.CopyFrom(seg)
        out.call_id = call_id
        out.seq = 0
        for k, v in kw.items():
            setattr(out, k, v)
        return (settings.topic(SPEECH_SEGMENTS), call_id.encode(), out.SerializeToString())

    produce(settings.kafka_bootstrap, [moved(source[PARTIAL])])
    trans.wait("the partial", lambda: [e for e in transcripts_of(trans, call_id) if e.is_partial], timeout=240)
    end = events_pb2.SpeechSegment(call_id=call_id, leg=sim.LUPITA, seq=1, kind=END,
                                   call_started_at_us=source[FINAL].call_started_at_us)
    produce(settings.kafka_bootstrap, [moved(source[FINAL]),
                                       (settings.topic(SPEECH_SEGMENTS), call_id.encode(), end.SerializeToString())])
    trans.wait("the final", lambda: [e for e in transcripts_of(trans, call_id) if e.leg_complete], timeout=240)
    events = [e for e in transcripts_of(trans, call_id) if not e.leg_complete]
    assert [e.is_partial for e in events] == [True, False]
    assert events[0].text and not events[0].words and events[1].text and events[1].words


def test_a_silent_leg_yields_no_transcript(calls, readers):
    _, quiet = calls
    segs, trans = readers
    events = transcripts_of(trans, quiet.call_id)
    person = [e for e in events if e.leg == sim.PERSON]
    assert [e.leg_complete for e in person] == [True] and person[0].seq == 0 and not person[0].text
    segs.poll()
    assert [s.kind for s in segments_of(segs, quiet.call_id) if s.leg == sim.PERSON] == [END]
    lupita = [e for e in events if e.leg == sim.LUPITA and not e.leg_complete and not e.is_partial]
    assert len(lupita) == 1
    assert_final_of_the_region(lupita[0], *quiet.truth[sim.LUPITA][0])


def test_a_redelivered_segment_is_not_transcribed_again(calls, readers, worker, settings):
    talk, _ = calls
    segs, trans = readers
    from lupita.topics import SPEECH_SEGMENTS

    record = next(r for r in segs.of(talk.call_id)
                  if (lambda s: (s.leg, s.seq, s.kind) == (sim.PERSON, 0, FINAL))(segment_of(r)))
    before = worker.metric("lupita_transcriber_segments_total", kind="final", outcome="duplicate")
    produce(settings.kafka_bootstrap, [(settings.topic(SPEECH_SEGMENTS), record.key, record.value)])
    # the duplicate queues behind whatever of the leg is still decoding: on a busy 2-core machine
    # that can be a while (the wait ends as soon as the counter moves)
    trans.wait("the transcriber to recognise the duplicate",
               lambda: worker.metric("lupita_transcriber_segments_total", kind="final", outcome="duplicate") > before,
               timeout=240)
    trans.poll()
    again = [e for e in transcripts_of(trans, talk.call_id)
             if (e.leg, e.seq) == (sim.PERSON, 0) and not e.is_partial]
    assert len(again) == 1


def test_a_bad_segment_goes_to_the_transcriber_dead_letter_topic(worker, settings):
    from lupita.topics import SPEECH_SEGMENTS
    from stream_processor.stages.transcriber.agent import TRANSCRIBER_DEAD_LETTERS

    key = f"asr-bad-{uuid.uuid4().hex[:8]}".encode()
    # odd number of PCM16 bytes: not audio
    bad = events_pb2.SpeechSegment(call_id=key.decode(), leg=sim.PERSON, kind=FINAL, sample_rate_hz=8000,
                                   pcm16=b"\x00", start_us=0, end_us=10)
    produce(settings.kafka_bootstrap, [(settings.topic(SPEECH_SEGMENTS), key, bad.SerializeToString())])
    with TopicReader(settings.kafka_bootstrap, settings.topic(TRANSCRIBER_DEAD_LETTERS)) as dead:
        records = dead.wait("the dead letter", lambda: [r for r in dead.records if r.key == key])
    assert dict(records[0].headers)["lupita-reason"] == b"invalid"
    assert records[0].value == bad.SerializeToString()
