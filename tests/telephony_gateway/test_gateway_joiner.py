"""Joining contiguous 20 ms frames into bridge frames (pure)."""

from __future__ import annotations

from telephony_gateway.joiner import FrameJoiner

T0 = 1_000_000


def feed(j: FrameJoiner, frames):
    out = []
    for i, gap in frames:
        out += j.add(T0 + i * 20_000, bytes([i]) * 4, 20.0, after_gap=gap)
    return out


def test_five_contiguous_frames_make_one_bridge_frame_of_100_ms():
    j = FrameJoiner(100)
    out = feed(j, [(i, False) for i in range(10)])
    assert [(o.seq, o.capture_ts_us) for o in out] == [(1, T0), (2, T0 + 100_000)]
    assert out[0].payload == b"".join(bytes([i]) * 4 for i in range(5))
    assert j.flush() == []


def test_a_gap_flushes_what_is_held_and_skips_a_seq():
    j = FrameJoiner(100)
    out = feed(j, [(0, False), (1, False), (2, False), (6, True), (7, False), (8, False), (9, False), (10, False)])
    assert [(o.seq, o.capture_ts_us, len(o.payload)) for o in out] == [(1, T0, 12), (3, T0 + 120_000, 20)]


def test_flush_at_the_end_sends_a_shorter_last_frame():
    j = FrameJoiner(100)
    assert feed(j, [(0, False), (1, False)]) == []
    (last,) = j.flush()
    assert (last.seq, last.capture_ts_us, len(last.payload)) == (1, T0, 8)


def test_at_20_ms_every_frame_goes_alone_and_a_gap_still_skips_a_seq():
    j = FrameJoiner(20)
    out = feed(j, [(0, False), (1, False), (5, True)])
    assert [o.seq for o in out] == [1, 2, 4]
