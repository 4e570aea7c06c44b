"""Re-chunking of 20 ms frames into >= chunk_ms AudioChunk records, per leg."""

from __future__ import annotations

import numpy as np
import pytest

from lupita.audio import mulaw_encode
from lupita.v1 import audio_pb2
from media_bridge.chunker import LegChunker

T0 = 1_700_000_000_000_000


def pcm_frame(i: int, samples: int) -> bytes:
    return (np.arange(samples, dtype=np.int16) + i * 7).astype("<i2").tobytes()


def feed(chunker: LegChunker, frames):
    out = []
    for seq, ts, payload in frames:
        out += chunker.add(seq, ts, payload)
    return out


def make(rate=8000, codec=audio_pb2.CODEC_PCM16, chunk_ms=100):
    return LegChunker(call_id="c1", leg=audio_pb2.LEG_PERSON, sample_rate_hz=rate, codec=codec, chunk_ms=chunk_ms)


@pytest.mark.parametrize("rate,codec,width", [
    (8000, audio_pb2.CODEC_PCM16, 2),
    (16000, audio_pb2.CODEC_PCM16, 2),
    (8000, audio_pb2.CODEC_MULAW, 1),
    (16000, audio_pb2.CODEC_MULAW, 1),
])
def test_contiguous_frames_make_100ms_chunks_byte_exact(rate, codec, width):
    samples = rate // 50  # 20 ms
    frames = []
    for i in range(12):
        pcm = pcm_frame(i, samples)
        payload = pcm if codec == audio_pb2.CODEC_PCM16 else mulaw_encode(np.frombuffer(pcm, "<i2"))
        assert len(payload) == samples * width
        frames.append((i + 1, T0 + i * 20_000, payload))
    c = make(rate, codec)
    chunks = feed(c, frames)
    assert [ch.frame_count for ch in chunks] == [5, 5]
    assert c.pending_frames == 2
    last = c.flush()
    chunks.append(last)
    assert c.flush() is None
    assert [ch.chunk_seq for ch in chunks] == [0, 1, 2]
    assert [(ch.first_frame_seq, ch.last_frame_seq) for ch in chunks] == [(1, 5), (6, 10), (11, 12)]
    assert [ch.start_ts_us for ch in chunks] == [T0, T0 + 100_000, T0 + 200_000]
    assert all(ch.sample_rate_hz == rate and ch.codec == codec and ch.call_id == "c1" for ch in chunks)
    assert all(ch.leg == audio_pb2.LEG_PERSON for ch in chunks)
    assert b"".join(ch.payload for ch in chunks) == b"".join(f[2] for f in frames)
    assert len(chunks[0].payload) == rate // 10 * width
    assert c.frames_total == 12


def test_sequence_gap_closes_the_chunk_and_starts_a_new_one_at_that_frame():
    c = make()
    p = pcm_frame(0, 160)
    chunks = feed(c, [(1, T0, p), (2, T0 + 20_000, p), (4, T0 + 60_000, p)])
    assert [(ch.first_frame_seq, ch.last_frame_seq, ch.frame_count) for ch in chunks] == [(1, 2, 2)]
    rest = c.flush()
    assert (rest.chunk_seq, rest.first_frame_seq, rest.start_ts_us) == (1, 4, T0 + 60_000)


def test_timestamp_jump_over_half_a_frame_closes_the_chunk():
    c = make()
    p = pcm_frame(0, 160)  # 20 ms
    # +9 ms of jitter is contiguous; +11 ms (more than half a frame) is not
    chunks = feed(c, [(1, T0, p), (2, T0 + 29_000, p), (3, T0 + 29_000 + 20_000 + 11_000, p)])
    assert [(ch.first_frame_seq, ch.last_frame_seq) for ch in chunks] == [(1, 2)]
    chunks = feed(c, [(4, T0 + 80_000 - 11_000, p)])  # backwards jump too
    assert [(ch.first_frame_seq, ch.last_frame_seq) for ch in chunks] == [(3, 3)]


def test_frame_longer_than_a_chunk_closes_immediately_and_gap_then_long_frame_yields_two():
    c = make(chunk_ms=100)
    chunks = c.add(1, T0, pcm_frame(0, 1600))  # 200 ms frame
    assert [ch.frame_count for ch in chunks] == [1]
    c.add(2, T0 + 200_000, pcm_frame(0, 160))
    chunks = c.add(9, T0 + 900_000, pcm_frame(0, 1600))  # gap, and the new frame fills a chunk
    assert [(ch.chunk_seq, ch.first_frame_seq) for ch in chunks] == [(1, 2), (2, 9)]


def test_chunk_ms_20_gives_one_record_per_frame():
    c = make(chunk_ms=20)
    p = pcm_frame(0, 160)
    chunks = feed(c, [(i, T0 + (i - 1) * 20_000, p) for i in range(1, 6)])
    assert [ch.chunk_seq for ch in chunks] == [0, 1, 2, 3, 4]
    assert c.flush() is None


def test_uneven_frames_chunk_on_duration_not_count():
    c = make(chunk_ms=100)
    ten_ms = pcm_frame(0, 80)
    chunks = feed(c, [(i, T0 + (i - 1) * 10_000, ten_ms) for i in range(1, 11)])
    assert [ch.frame_count for ch in chunks] == [10]
