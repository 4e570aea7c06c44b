"""StereoMuxer (pure): placement by timestamps, silence, overlaps, jitter, codecs, WAV format."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from lupita.audio import mulaw_decode, mulaw_encode
from lupita.v1 import audio_pb2, events_pb2
from stream_processor.stages.recorder.wav import InvalidChunk, StereoMuxer, wav_header

L, P = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON
PCM, MULAW = audio_pb2.CODEC_PCM16, audio_pb2.CODEC_MULAW
T0 = 1_700_000_000_000_000  # call start, unix us


def chunk(leg: int, seq: int, start_ms: float, samples: np.ndarray, *, rate: int = 8000, codec: int = PCM):
    payload = mulaw_encode(samples) if codec == MULAW else samples.astype("<i2").tobytes()
    return events_pb2.AudioChunk(
        call_id="c1", leg=leg, chunk_seq=seq, start_ts_us=T0 + int(start_ms * 1000), sample_rate_hz=rate,
        codec=codec, payload=payload, frame_count=max(1, len(samples) // (rate // 50)),
    )


def ramp(n: int, base: int = 1) -> np.ndarray:
    return (np.arange(n, dtype=np.int32) % 30000 + base).astype(np.int16)


def decode(wav: bytes) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(io.BytesIO(wav)) as w:
        p = w.getparams()
        return p, np.frombuffer(w.readframes(p.nframes), dtype="<i2").reshape(-1, p.nchannels)


def test_legs_are_placed_by_timestamp_with_silence_in_the_gaps():
    mux = StereoMuxer(sample_rate=8000, call_started_us=T0)
    a = ramp(800)
    b = ramp(400, base=5000)
    mux.add(chunk(L, 0, 0, a))
    mux.add(chunk(P, 0, 50, b))  # person starts 50 ms = 400 samples later
    mux.add(chunk(P, 1, 200, b))  # after a 100 ms hole (the 50 ms chunk ended at 100 ms)
    params, frames = decode(mux.wav_bytes())
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    expected = np.zeros((2000, 2), dtype=np.int16)
    expected[:800, 0] = a
    expected[400:800, 1] = b
    expected[1600:2000, 1] = b
    np.testing.assert_array_equal(frames, expected)
    stats = mux.plan().stats
    assert stats[P].gaps == 2 and stats[P].gap_samples == 400 + 800
    assert stats[L].gaps == 0 and stats[L].first_offset == 0


def test_order_of_adding_does_not_matter_and_a_repeated_chunk_replaces_itself():
    chunks = [chunk(L, i, i * 100, ramp(800, base=i * 100)) for i in range(5)]
    one = StereoMuxer(sample_rate=8000, call_started_us=T0)
    two = StereoMuxer(sample_rate=8000, call_started_us=T0)
    for c in chunks:
        one.add(c)
    for c in reversed(chunks + chunks[:2]):
        two.add(c)
    assert one.wav_bytes() == two.wav_bytes()
    assert two.chunk_count(L) == 5


def test_timestamp_jitter_within_tolerance_is_contiguous_and_an_overlap_keeps_the_earlier_audio():
    mux = StereoMuxer(sample_rate=8000, call_started_us=T0, align_tolerance_ms=10)
    a, b, c = ramp(800, 1), ramp(800, 2), ramp(800, 3)
    mux.add(chunk(L, 0, 0, a))
    mux.add(chunk(L, 1, 103, b))  # 3 ms late: jitter, placed right after chunk 0
    mux.add(chunk(L, 2, 150, c))  # 50 ms overlap with chunk 1 (ends at 200 ms): its head is dropped
    _, frames = decode(mux.wav_bytes())
    np.testing.assert_array_equal(frames[:800, 0], a)
    np.testing.assert_array_equal(frames[800:1600, 0], b)
    np.testing.assert_array_equal(frames[1600:2000, 0], c[400:])
    assert len(frames) == 2000
    assert mux.plan().stats[L].overlap_samples_dropped == 400


def test_a_chunk_captured_before_the_call_start_moves_the_origin_instead_of_being_cut():
    mux = StereoMuxer(sample_rate=8000, call_started_us=T0)
    mux.add(chunk(P, 0, -20, ramp(160)))
    mux.add(chunk(L, 0, 0, ramp(160, 7)))
    plan = mux.plan()
    assert plan.origin_us == T0 - 20_000
    _, frames = decode(mux.wav_bytes())
    np.testing.assert_array_equal(frames[:160, 1], ramp(160))
    np.testing.assert_array_equal(frames[160:320, 0], ramp(160, 7))


def test_mulaw_chunks_are_decoded_to_pcm16_at_16k():
    mux = StereoMuxer(sample_rate=16000, call_started_us=T0)
    s = ramp(1600) - 15000
    mux.add(chunk(L, 0, 0, s, rate=16000, codec=MULAW))
    params, frames = decode(mux.wav_bytes())
    assert params.framerate == 16000
    np.testing.assert_array_equal(frames[:, 0], mulaw_decode(mulaw_encode(s)))
    assert not frames[:, 1].any()


def test_streamed_pieces_equal_the_whole_file_and_blocks_split_chunks_correctly():
    mux = StereoMuxer(sample_rate=8000, call_started_us=T0)
    for i in range(7):
        mux.add(chunk(L, i, i * 100, ramp(800, i)))
        mux.add(chunk(P, i, i * 100 + 30, ramp(800, 100 + i)))
    whole = mux.wav_bytes()
    pieces = list(mux.iter_wav(block_frames=333))
    assert len(pieces[0]) == 44 and b"".join(pieces) == whole
    assert all(len(p) <= 333 * 4 for p in pieces[1:])


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(rate=16000), "sample rate 16000 Hz differs"),
        (dict(codec=audio_pb2.CODEC_UNSPECIFIED), "unsupported codec"),
        (dict(leg=audio_pb2.LEG_UNSPECIFIED), "unknown leg"),
    ],
)
def test_a_chunk_that_does_not_fit_the_call_is_refused_with_a_precise_error(bad, match):
    mux = StereoMuxer(sample_rate=8000, call_started_us=T0)
    c = chunk(bad.get("leg", L), 3, 0, ramp(160), rate=bad.get("rate", 8000))
    if "codec" in bad:
        c.codec = bad["codec"]
    with pytest.raises(InvalidChunk, match=match):
        mux.add(c)


def test_odd_pcm16_payload_is_refused():
    mux = StereoMuxer(sample_rate=8000, call_started_us=T0)
    c = chunk(L, 0, 0, ramp(10))
    c.payload = c.payload + b"\x01"
    with pytest.raises(InvalidChunk, match="whole number of 2-byte samples"):
        mux.add(c)


def test_a_chunk_beyond_the_length_limit_names_itself():
    mux = StereoMuxer(sample_rate=8000, call_started_us=T0, max_seconds=10)
    mux.add(chunk(L, 0, 0, ramp(160)))
    mux.add(chunk(P, 9, 20_000, ramp(160)))  # 20 s after the start
    with pytest.raises(InvalidChunk, match="beyond the 10 s limit") as err:
        mux.plan()
    assert (err.value.leg, err.value.chunk_seq) == (P, 9)
    mux.remove(P, 9)
    assert mux.plan().total_frames == 160


def test_wav_header_fields():
    h = wav_header(8000, 3200)
    assert h[:4] == b"RIFF" and h[8:16] == b"WAVEfmt " and h[36:40] == b"data" and len(h) == 44
    assert int.from_bytes(h[4:8], "little") == 36 + 3200
    assert int.from_bytes(h[28:32], "little") == 8000 * 4  # byte rate
    with pytest.raises(ValueError, match="too long"):
        wav_header(8000, 2**32)
