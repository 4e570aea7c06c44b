"""The vad stage's plain core (``VadCore``): real Silero model, synthesised Spanish calls made of
the media bridge's own records, no Kafka. The Faust agent around it is tested in
``test_pipeline_segments.py``."""

from __future__ import annotations

import json
import time

import calls as P
import numpy as np
import pytest

from lupita.v1 import audio_pb2, events_pb2
from stream_processor import callstate as cs
from stream_processor import records
from stream_processor.models.vad import SileroModel
from stream_processor.stages.vad.core import (
    KIND_END,
    KIND_FINAL,
    KIND_PARTIAL,
    SegmentOut,
    VadCore,
    piece_key,
)
from stream_processor.stages.vad.settings import VadStageSettings

LUPITA, PERSON = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON
PAD_S = VadStageSettings(_env_file=None).vad_speech_pad_ms / 1000
NOW = 1_000.0


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synth-cache")


@pytest.fixture(scope="module")
def audio(cache):
    return P.dialogue(cache_dir=cache)


def new_call(audio, call_id="core-call", **kw) -> P.PipelineCall:
    stereo, truth = audio
    return P.make_call(call_id, stereo, truth, started_at_us=1_764_000_000_000_000, **kw)


def run(core: VadCore, call: P.PipelineCall, *, chunks=None, started_first=True, finish=True) -> list[SegmentOut]:
    """Feed the call's records one by one (stepping after each), as the agent would."""
    out: list[SegmentOut] = []
    if started_first:
        core.on_lifecycle(call.started, 0, NOW)
    for c in call.chunks if chunks is None else chunks:
        core.on_chunk(c, c.SerializeToString(), 0, NOW)
        out += core.step()
    if not started_first:
        core.on_lifecycle(call.started, 0, NOW)
        out += core.step()
    if finish:
        core.on_lifecycle(call.ended, 0, NOW)
        if chunks is None:
            assert core.check(call.call_id, NOW, alive_since=0.0) == "finished:complete"
        else:  # chunks are missing: the call ends once the grace period is over
            assert core.check(call.call_id, NOW + core.settings.vad_grace_seconds, alive_since=0.0) \
                == "finished:grace_expired"
        out += core.take_outputs()
    return out


def finals(out, leg=None):
    return [o for o in out if o.kind == KIND_FINAL and (leg is None or o.leg == leg)]


def comparable(out):
    return [(o.leg, o.seq, o.kind, o.revision, o.start, o.end, o.pcm16) for o in out]


# --- segments on the call timeline --------------------------------------------------------------


@pytest.mark.parametrize("rate,codec", [(8000, audio_pb2.CODEC_PCM16), (16000, audio_pb2.CODEC_MULAW)])
def test_segments_of_both_legs_match_the_scripts_speech_regions(model, cache, rate, codec):
    stereo, truth = P.dialogue(rate=rate, cache_dir=cache)
    call = P.make_call("core-regions", stereo, truth, rate=rate, codec=codec)
    out = run(VadCore(model), call)
    for leg in (LUPITA, PERSON):
        found = [(o.start / rate, o.end / rate) for o in finals(out, leg)]
        assert len(found) == len(truth[leg]), (leg, found, truth[leg])
        for (start, end), (t_start, t_end) in zip(found, truth[leg]):
            # segments carry speech_pad_ms of padding on both sides
            assert abs(start + PAD_S - t_start) <= 0.100, (leg, start, t_start)
            # Silero's probability decays ~100-150 ms after the last phoneme: ends may be late by that
            assert -0.100 <= end - PAD_S - t_end <= 0.160, (leg, end, t_end)
    # each final carries exactly the leg's audio of [start, end) (mu-law decoded by lupita.audio)
    column = {LUPITA: 0, PERSON: 1}
    for o in finals(out):
        expected = stereo[o.start:o.end, column[o.leg]]
        got = np.frombuffer(o.pcm16, dtype="<i2")
        if codec == audio_pb2.CODEC_PCM16:
            assert np.array_equal(got, expected)
        else:
            assert got.size == expected.size and np.max(np.abs(got.astype(int) - expected)) < 1100
    ends = [o for o in out if o.kind == KIND_END]
    assert sorted((o.leg, o.seq) for o in ends) == [(LUPITA, 2), (PERSON, 2)]
    assert all(o.ident[0] == "core-regions" and o.origin_us == call.started_at_us for o in out)


def test_chunks_before_the_started_event_are_held_and_give_the_same_segments(model, audio):
    call = new_call(audio)
    normal = run(VadCore(model), call)
    late_start = run(VadCore(model, VadStageSettings(_env_file=None, vad_max_held_chunks=1000)), call, started_first=False)
    assert comparable(late_start) == comparable(normal)


def test_redelivered_chunks_are_skipped(model, audio):
    call = new_call(audio)
    core = VadCore(model)
    twice = [c for c in call.chunks for _ in range(2)]
    reasons = []
    core.on_lifecycle(call.started, 0, NOW)
    out = []
    for c in twice:
        reasons.append(core.on_chunk(c, c.SerializeToString(), 0, NOW))
        out += core.step()
    core.on_lifecycle(call.ended, 0, NOW)
    core.check(call.call_id, NOW, alive_since=0.0)
    out += core.take_outputs()
    assert reasons.count("duplicate") == len(call.chunks)
    assert comparable(out) == comparable(run(VadCore(model), call))


def test_lost_chunks_are_silence_and_later_segments_keep_their_call_time(model, audio):
    call = new_call(audio)
    full = run(VadCore(model), call)
    # lose 300 ms of the person's leg inside the silence before its second turn
    second = finals(full, PERSON)[1]
    lost_from = second.start / call.rate - 0.6
    kept = [c for c in call.chunks
            if not (c.leg == PERSON and lost_from <= (c.start_ts_us - call.started_at_us) / 1e6 < lost_from + 0.3)]
    assert len(kept) == len(call.chunks) - 3
    out = run(VadCore(model), call, chunks=kept)
    assert [(o.start, o.end) for o in finals(out, PERSON)] == [(o.start, o.end) for o in finals(full, PERSON)]


def test_a_call_without_recording_consent_yields_no_segments(model, audio):
    call = new_call(audio)
    call.started.started.recording_consent = False
    core = VadCore(model)
    out = run(core, call)
    assert [o.kind for o in out] == [KIND_END, KIND_END]
    assert core.calls[call.call_id].state.status == cs.SKIPPED


# --- batching and restarts ----------------------------------------------------------------------


def test_one_inference_serves_every_ready_stream_and_matches_one_call_at_a_time(model, audio):
    a, b = new_call(audio, "core-a"), new_call(audio, "core-b")
    alone = {c.call_id: run(VadCore(model), c) for c in (a, b)}
    core = VadCore(model)
    batch_sizes: list[int] = []
    for c in (a, b):
        core.on_lifecycle(c.started, 0, NOW)
    out = []
    # what a take_events batch holds: 100 ms of both legs of both calls, then one drain
    for i in range(0, len(a.chunks), 2):
        for c in (a, b):
            for chunk in c.chunks[i:i + 2]:
                core.on_chunk(chunk, chunk.SerializeToString(), 0, NOW)
        out += core.step(on_batch=batch_sizes.append)
    for c in (a, b):
        core.on_lifecycle(c.ended, 0, NOW)
        core.check(c.call_id, NOW, alive_since=0.0)
    out += core.take_outputs()
    assert max(batch_sizes) == 4  # both legs of both calls in one model run
    for c in (a, b):
        assert comparable([o for o in out if o.call_id == c.call_id]) == comparable(alone[c.call_id])


@pytest.mark.parametrize("every", [1, 7])
def test_state_exported_and_reloaded_at_any_record_gives_identical_records(model, audio, every):
    call = new_call(audio)
    config = VadStageSettings(_env_file=None, vad_partial_after_s=1.5, vad_partial_every_s=1.0)
    reference = run(VadCore(model, config), call)
    table: dict[str, dict] = {}
    pieces: dict[str, bytes] = {}

    def persist(core: VadCore) -> None:
        value, new, gone = core.export_call(call.call_id)
        pieces.update(new)
        for key in gone:
            pieces.pop(key, None)
        table[call.call_id] = json.loads(json.dumps(value))  # what the JSON changelog carries

    core = VadCore(model, config)
    core.on_lifecycle(call.started, 0, NOW)
    out = []
    for i, c in enumerate(call.chunks):
        core.on_chunk(c, c.SerializeToString(), 0, NOW)
        out += core.step()
        if i % every == 0:  # a new worker: only the tables survive
            persist(core)
            core = VadCore(model, config)
            core.load(call.call_id, table[call.call_id], pieces.get)
    core.on_lifecycle(call.ended, 0, NOW)
    core.check(call.call_id, NOW, alive_since=0.0)
    out += core.take_outputs()
    assert comparable(out) == comparable(reference)
    persist(core)
    assert pieces == {}  # a finished call keeps no audio
    assert table[call.call_id]["legs"]["lupita"]["vad"] is None


def test_audio_kept_per_leg_stays_small_while_nobody_speaks(model):
    silence = np.zeros((8000 * 20, 2), dtype=np.int16)
    call = P.make_call("core-quiet", silence, {LUPITA: [], PERSON: []})
    core = VadCore(model)
    run(core, call, finish=False)
    value, new, gone = core.export_call(call.call_id)
    kept = [len(value["legs"][leg]["pieces"]) for leg in ("lupita", "person")]
    assert max(kept) <= 5, kept  # < 0.5 s of 100 ms chunks, out of 20 s
    assert new and all(key.startswith(f"{call.call_id}:") for key in new)
    # the first chunk was forgotten before this (first) export: never written, nothing to delete
    assert piece_key(call.call_id, LUPITA, 0) not in new and not gone


# --- partial snapshots --------------------------------------------------------------------------


def test_long_segments_get_partial_snapshots_before_their_final(model, audio):
    call = new_call(audio)
    out = run(VadCore(model, VadStageSettings(_env_file=None, vad_partial_after_s=2.5, vad_partial_every_s=1.0)), call)
    long_final = max(finals(out), key=lambda o: o.end - o.start)
    snaps = [o for o in out if o.kind == KIND_PARTIAL and (o.leg, o.seq) == (long_final.leg, long_final.seq)]
    assert len(snaps) >= 2
    position = {id(o): i for i, o in enumerate(out)}
    assert all(position[id(s)] < position[id(long_final)] for s in snaps)
    assert [s.revision for s in snaps] == list(range(len(snaps)))
    assert long_final.revision == len(snaps)
    for s in snaps:  # each snapshot is the head of the segment's audio so far
        assert s.start == long_final.start and s.end - s.start == int(round((2.5 + s.revision) * call.rate))
        assert long_final.pcm16.startswith(s.pcm16)
    short = [o for o in finals(out) if (o.end - o.start) / call.rate < 2.5]
    assert short  # the greetings (~2 s) get no snapshot
    assert not [o for o in out if o.kind == KIND_PARTIAL and (o.leg, o.seq) in {(f.leg, f.seq) for f in short}]
    assert not [o for o in run(VadCore(model, VadStageSettings(_env_file=None, vad_partial_after_s=0)), call) if o.kind == KIND_PARTIAL]


# --- bad input and the end of a call ---------------------------------------------------------------


def test_bad_chunks_are_refused_with_the_reason(model, audio):
    call = new_call(audio)
    core = VadCore(model, VadStageSettings(_env_file=None, recorder_max_call_seconds=60, vad_max_held_chunks=2))
    core.on_lifecycle(call.started, 0, NOW)
    wrong_rate = events_pb2.AudioChunk()
    wrong_rate.CopyFrom(call.chunks[0])
    wrong_rate.sample_rate_hz = 16000
    with pytest.raises(records.BadRecord, match="16000 Hz differs from the call's 8000 Hz") as err:
        core.on_chunk(wrong_rate, b"", 0, NOW)
    assert err.value.reason == "rate_mismatch"
    far = events_pb2.AudioChunk()
    far.CopyFrom(call.chunks[0])
    far.start_ts_us = call.started_at_us + 3600 * 1_000_000
    with pytest.raises(records.BadRecord, match="beyond the 60 s limit") as err:
        core.on_chunk(far, b"", 0, NOW)
    assert err.value.reason == "beyond_limit"
    other = new_call(audio, "core-held")
    for c in other.chunks[:2]:
        assert core.on_chunk(c, c.SerializeToString(), 0, NOW) is None  # held: no started event yet
    with pytest.raises(records.BadRecord, match="more than 2 chunks before the call's started event") as err:
        core.on_chunk(other.chunks[2], other.chunks[2].SerializeToString(), 0, NOW)
    assert err.value.reason == "held_overflow"


def test_a_huge_timestamp_jump_restarts_the_leg_instead_of_feeding_hours_of_silence(model, audio):
    call = new_call(audio)
    core = VadCore(model, VadStageSettings(_env_file=None, vad_max_gap_s=5))
    first = run(core, call, finish=False)
    jump = events_pb2.AudioChunk()
    jump.CopyFrom(call.chunks[-1])
    jump.chunk_seq += 1000
    jump.start_ts_us = call.started_at_us + 3 * 3600 * 1_000_000
    t0 = time.process_time()
    core.on_chunk(jump, jump.SerializeToString(), 0, NOW)
    out = core.step()
    assert time.process_time() - t0 < 1.0  # 3 h of silence would be ~340,000 windows
    assert out == [] and first
    leg = core.calls[call.call_id].legs[jump.leg]
    assert leg.base == int(3 * 3600 * call.rate)
    assert leg.cursor - leg.base == len(jump.payload) // 2
    assert leg.seq_base == leg.segments == 2  # later segments keep counting


def test_a_call_is_finished_when_every_announced_chunk_is_in_or_after_the_grace(model, audio):
    call = new_call(audio)
    config = VadStageSettings(_env_file=None, vad_grace_seconds=5, vad_idle_seconds=60)
    core = VadCore(model, config)
    core.on_lifecycle(call.started, 0, NOW)
    core.on_lifecycle(call.ended, 0, NOW)  # the ended event may overtake chunks (another topic)
    for c in call.chunks[:-1]:
        core.on_chunk(c, c.SerializeToString(), 0, NOW)
    core.step()
    assert core.check(call.call_id, NOW + 1, alive_since=0.0) is None  # one chunk missing
    assert core.check(call.call_id, NOW + 10, alive_since=0.0, backlog=True) is None  # still being read
    assert core.check(call.call_id, NOW + 6, alive_since=0.0) == "finished:grace_expired"
    out = core.take_outputs()
    assert sorted(o.leg for o in out if o.kind == KIND_END) == [LUPITA, PERSON]
    late = call.chunks[-1]
    assert core.on_chunk(late, late.SerializeToString(), 0, NOW + 7) == "late"
    assert core.check(call.call_id, NOW + 7 + config.vad_state_retention_seconds, alive_since=0.0) == "purged"
    assert not core.has(call.call_id)
    value, _, _ = core.export_call(call.call_id)
    assert value is None  # the agent deletes the table entry


def test_orphan_chunks_without_a_started_event_are_dropped(model, audio):
    call = new_call(audio)
    core = VadCore(model, VadStageSettings(_env_file=None, vad_orphan_seconds=5))
    for c in call.chunks[:5]:
        core.on_chunk(c, c.SerializeToString(), 0, NOW)
    assert core.check(call.call_id, NOW + 1, alive_since=0.0) is None
    assert core.check(call.call_id, NOW + 6, alive_since=0.0) == "dropped:no_started_event"
    assert core.take_outputs() == [] and core.calls[call.call_id].held == []
