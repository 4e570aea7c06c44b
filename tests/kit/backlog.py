"""A transcriber fed a backlog: the closed segments of synthesised two-leg calls produced at once
to a real ``lupita worker`` (LUPITA_STAGES=transcriber), and the checks that hold for any voice
(the packing and batching tests share them; which words Whisper hears is the benchmarks' matter)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from kafka_io import TopicReader, produce, transcripts_of
from procs import start_worker, stop_worker

from loadgen.synth import DEFAULT_VOICES, LUPITA, PERSON, synthesize_utterance
from lupita.v1 import audio_pb2, events_pb2

RATE = 8000
PAD_S = 0.3
CALL_STARTED_AT_US = 1_764_000_000_000_000
FINAL, PARTIAL, END = (events_pb2.SEGMENT_KIND_FINAL, events_pb2.SEGMENT_KIND_PARTIAL,
                       events_pb2.SEGMENT_KIND_END_OF_LEG)
VOICE = {audio_pb2.LEG_LUPITA: DEFAULT_VOICES[LUPITA], audio_pb2.LEG_PERSON: DEFAULT_VOICES[PERSON]}
LEGS = (audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON)

Turns = Mapping[int, Sequence[str]]  # leg -> its segments' sentences, in order


@contextlib.contextmanager
def transcriber_worker(tmp_path_factory, settings, tag: str, env: Mapping[str, str]) -> Iterator:
    """A ``lupita worker`` with ``env`` on the topics of ``settings`` (its own prefix)."""
    w = start_worker(tmp_path_factory.mktemp(f"{tag}-worker"), f"{tag}-test-{uuid.uuid4().hex[:8]}",
                     env_extra={**env, "LUPITA_TOPIC_PREFIX": settings.topic_prefix})
    try:
        yield w
    finally:
        stop_worker(w)


def call_segments(call_id: str, turns: Turns) -> list[events_pb2.SpeechSegment]:
    """The call's closed segments (the legs alternate in call time), then END_OF_LEG per leg; one
    partial snapshot of the person's last segment before its final (the partial -> final contract)."""
    pad = np.zeros(int(PAD_S * RATE), np.int16)
    out: list[events_pb2.SpeechSegment] = []
    t = 0.5
    order = [(leg, i) for i in range(max(map(len, turns.values()))) for leg in LEGS if i < len(turns[leg])]
    for leg, i in order:
        audio = np.concatenate([pad, synthesize_utterance(turns[leg][i], RATE, VOICE[leg]), pad])
        start_us, end_us = int(t * 1e6), int((t + audio.size / RATE) * 1e6)
        common = dict(call_id=call_id, leg=leg, seq=i, start_us=start_us, sample_rate_hz=RATE,
                      call_started_at_us=CALL_STARTED_AT_US)
        if leg == audio_pb2.LEG_PERSON and i == len(turns[leg]) - 1:
            half = audio[: audio.size // 2]
            out.append(events_pb2.SpeechSegment(**common, end_us=start_us + int(half.size / RATE * 1e6),
                                                pcm16=half.astype("<i2").tobytes(), kind=PARTIAL, revision=0))
        out.append(events_pb2.SpeechSegment(**common, end_us=end_us, pcm16=audio.astype("<i2").tobytes(),
                                            kind=FINAL, revision=1))
        t += audio.size / RATE + 0.4
    for leg in turns:
        out.append(events_pb2.SpeechSegment(call_id=call_id, leg=leg, seq=len(turns[leg]), kind=END,
                                            call_started_at_us=CALL_STARTED_AT_US))
    return out


def transcribe_backlog(settings, segs: Mapping[str, list]) -> dict[str, list]:
    """Produce every call's segments at once; each call's transcript events once both legs completed."""
    from lupita.topics import SPEECH_SEGMENTS, TRANSCRIPTS

    produce(settings.kafka_bootstrap, [(settings.topic(SPEECH_SEGMENTS), cid.encode(), s.SerializeToString())
                                       for cid, ss in segs.items() for s in ss])
    with TopicReader(settings.kafka_bootstrap, settings.topic(TRANSCRIPTS)) as trans:
        for cid in segs:
            trans.wait(f"the transcripts of {cid}",
                       lambda cid=cid: sum(e.leg_complete for e in transcripts_of(trans, cid)) >= 2, timeout=480)
        return {cid: transcripts_of(trans, cid) for cid in segs}


def assert_one_final_per_segment(call_id: str, turns: Turns, segs: list, events: list) -> None:
    """Every segment got exactly one final, in its own call, leg and segment, in the leg's order,
    with its words in call time inside its own segment; each leg completed once, after the rest."""
    for leg, sentences in turns.items():
        finals = [e for e in events if e.leg == leg and not e.is_partial and not e.leg_complete]
        assert [e.seq for e in finals] == list(range(len(sentences)))  # once each, in the leg's order
        by_seq = {s.seq: s for s in segs if s.leg == leg and s.kind == FINAL}
        for e in finals:
            s = by_seq[e.seq]
            assert e.call_id == call_id and e.text.strip() and e.words, (call_id, leg, e.seq, list(e.guard_actions))
            assert (e.segment_start_us, e.segment_end_us) == (s.start_us, s.end_us)
            for w in e.words:  # call time, inside its own segment
                assert s.start_us <= w.start_us <= w.end_us <= s.end_us
        complete = [i for i, e in enumerate(events) if e.leg == leg and e.leg_complete]
        assert len(complete) == 1
        assert all(i < complete[0] for i, e in enumerate(events) if e.leg == leg and not e.leg_complete)


def assert_no_partial_after_its_final(events: list) -> None:
    for i, e in enumerate(events):
        if e.is_partial:
            assert not any((f.leg, f.seq) == (e.leg, e.seq) and not f.is_partial for f in events[:i])
