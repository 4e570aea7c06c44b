"""The transcriber stage's plain parts: record validation, the per-leg order used to recognise
redeliveries, stale partials, and the TranscriptEvent in call time. No Kafka, no model."""

from __future__ import annotations

import pytest

from lupita.v1 import audio_pb2, events_pb2
from stream_processor import records
from stream_processor.models.asr.base import TranscriptResult, TranscriptSegment, Word
from stream_processor.stages.transcriber.core import (
    leg_complete_event,
    order_key,
    parse_segment,
    stale_partial,
    transcript_event,
)

FINAL, PARTIAL, END = (events_pb2.SEGMENT_KIND_FINAL, events_pb2.SEGMENT_KIND_PARTIAL,
                       events_pb2.SEGMENT_KIND_END_OF_LEG)


def segment(**kw) -> events_pb2.SpeechSegment:
    base = dict(call_id="call-1", leg=audio_pb2.LEG_PERSON, seq=3, start_us=2_500_000, end_us=4_500_000,
                sample_rate_hz=8000, pcm16=b"\x01\x00" * 16000, kind=FINAL, revision=2,
                call_started_at_us=1_764_000_000_000_000, emitted_at_us=1_764_000_000_600_000)
    base.update(kw)
    return events_pb2.SpeechSegment(**base)


def test_a_valid_segment_is_accepted():
    seg = segment()
    assert parse_segment(b"call-1", seg.SerializeToString()) == seg
    end = segment(kind=END, pcm16=b"", sample_rate_hz=0, start_us=0, end_us=0)
    assert parse_segment(b"call-1", end.SerializeToString()).kind == END


@pytest.mark.parametrize("key,seg,reason,match", [
    (b"call-1", None, "undecodable", "not a SpeechSegment protobuf"),
    (b"call-1", segment(call_id="+52 951 555 0100"), "invalid_call_id", "not a valid call id"),
    (b"other", segment(), "key_mismatch", "key differs"),
    (None, segment(), "key_mismatch", "key differs"),
    (b"call-1", segment(leg=audio_pb2.LEG_UNSPECIFIED), "invalid", "is not LEG_LUPITA or LEG_PERSON"),
    (b"call-1", segment(kind=events_pb2.SEGMENT_KIND_UNSPECIFIED), "invalid", "is not FINAL, PARTIAL"),
    (b"call-1", segment(sample_rate_hz=44100), "invalid", "sample rate 44100"),
    (b"call-1", segment(pcm16=b""), "invalid", "pcm16 of 0 bytes"),
    (b"call-1", segment(pcm16=b"\x00" * 3), "invalid", "pcm16 of 3 bytes"),
    (b"call-1", segment(pcm16=b"\x00\x00" * 8000 * 40), "invalid", "more than 31 s"),
    (b"call-1", segment(end_us=2_000_000), "invalid", "non-negative, increasing"),
    (b"call-1", segment(start_us=-5), "invalid", "non-negative, increasing"),
])
def test_bad_segments_are_refused_with_the_reason(key, seg, reason, match):
    value = b"\xff\xff not protobuf" if seg is None else seg.SerializeToString()
    with pytest.raises(records.BadRecord, match=match) as err:
        parse_segment(key, value)
    assert err.value.reason == reason
    assert "951" not in str(err.value)  # never echoes what could be a phone number


def test_records_of_a_leg_are_ordered_as_the_vad_emits_them():
    emitted = [segment(seq=0, kind=PARTIAL, revision=0), segment(seq=0, kind=PARTIAL, revision=1),
               segment(seq=0, kind=FINAL, revision=2), segment(seq=1, kind=FINAL, revision=0),
               segment(seq=2, kind=END, revision=0)]
    keys = [order_key(s) for s in emitted]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    # a redelivery of any of them is at or below the progress of what followed it
    assert all(order_key(s) <= keys[-1] for s in emitted)


def test_a_partial_is_stale_once_anything_newer_of_its_leg_waits():
    p0 = segment(seq=0, kind=PARTIAL, revision=0)
    assert stale_partial(p0, [segment(seq=0, kind=PARTIAL, revision=1)])
    assert stale_partial(p0, [segment(seq=0, kind=FINAL, revision=1)])
    assert not stale_partial(p0, [])
    assert not stale_partial(segment(seq=0, kind=FINAL), [segment(seq=1, kind=FINAL)])  # finals never skip


def test_words_and_times_move_to_call_time():
    words = (Word("Me", 0.10, 0.30, 0.9), Word("duele", 0.30, 0.70, 0.7), Word("mucho", 0.75, 1.2, None))
    result = TranscriptResult(
        segments=(TranscriptSegment("Me duele mucho", 0.1, 1.2, words, avg_logprob=-0.2),),
        language="es", is_partial=False, backend="local", model="whisper-base", audio_seconds=2.0,
        guard_actions=("hallucination:amara",),
    )
    ev = transcript_event(segment(), result, emitted_at_us=42)
    assert (ev.call_id, ev.leg, ev.seq, ev.revision, ev.is_partial) == ("call-1", audio_pb2.LEG_PERSON, 3, 2, False)
    assert ev.text == "Me duele mucho" and ev.language == "es" and ev.backend == "local"
    assert [(w.word, w.start_us, w.end_us) for w in ev.words] == [
        ("Me", 2_600_000, 2_800_000), ("duele", 2_800_000, 3_200_000), ("mucho", 3_250_000, 3_700_000)]
    assert ev.words[0].HasField("probability") and not ev.words[2].HasField("probability")
    assert ev.confidence == pytest.approx(0.8)
    assert (ev.segment_start_us, ev.segment_end_us, ev.emitted_at_us) == (2_500_000, 4_500_000, 42)
    assert list(ev.guard_actions) == ["hallucination:amara"]
    partial = transcript_event(segment(kind=PARTIAL, revision=0), result, emitted_at_us=43)
    assert partial.is_partial and partial.revision == 0


def test_a_segment_that_could_not_be_transcribed_still_gets_an_empty_final():
    ev = transcript_event(segment(), None, emitted_at_us=7, error="AsrBackendError")
    assert ev.text == "" and not ev.HasField("confidence") and list(ev.guard_actions) == ["error:AsrBackendError"]
    done = leg_complete_event(segment(kind=END, seq=4), emitted_at_us=8)
    assert done.leg_complete and done.seq == 4 and done.text == ""


def test_an_empty_final_says_why():
    from stream_processor.stages.transcriber.core import empty_reason

    def ev(*actions):
        return events_pb2.TranscriptEvent(call_id="call-1", guard_actions=list(actions))

    assert empty_reason(ev("error:AsrBackendError")) == "error"
    assert empty_reason(ev("quiet_audio")) == "quiet_audio"
    assert empty_reason(ev("vad_filter_empty", "silence")) == "silence"
    assert empty_reason(ev("hallucination:amara")) == "hallucination"
    assert empty_reason(ev("packed", "pack_gap_word", "pack_gap_word")) == "pack_gap"
    assert empty_reason(ev("packed")) == "no_speech_decoded"
    assert empty_reason(ev()) == "no_speech_decoded"


def test_a_guard_action_is_named_without_its_detail_for_the_metric():
    from stream_processor.stages.transcriber.core import guard_action_name

    assert guard_action_name("hallucination:subtítulos por la comunidad") == "hallucination"
    assert guard_action_name("repetition:sí sí sí x5") == "repetition"
    assert guard_action_name("compression_ratio>2.4") == "compression_ratio"
    assert guard_action_name("error:AsrBackendError") == "error"
    assert guard_action_name("full_window") == "full_window"
    assert guard_action_name(":odd") == "unknown"


def test_segment_seconds_is_the_audio_carried():
    from stream_processor.stages.transcriber.core import segment_seconds

    assert segment_seconds(segment()) == pytest.approx(2.0)  # 16000 samples at 8 kHz
    assert segment_seconds(segment(kind=END, pcm16=b"", sample_rate_hz=0)) == 0.0
