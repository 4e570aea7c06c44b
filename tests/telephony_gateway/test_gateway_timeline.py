"""A track's frames on the call clock (pure): positions, gaps, drops and the format check."""

from __future__ import annotations

import pytest

from telephony_gateway.errors import BadInput
from telephony_gateway.timeline import TrackTimeline

T0 = 1_764_000_000_000_000


def timeline(**kw) -> TrackTimeline:
    values = dict(started_at_us=T0, sample_rate=8000, bytes_per_sample=1, max_frame_ms=200, check_frames=4, name="inbound")
    values.update(kw)
    return TrackTimeline(**values)


def test_contiguous_frames_get_consecutive_seqs_from_one_and_their_timestamps():
    t = timeline()
    placed = [t.place(chunk, (chunk - 1) * 20, 160) for chunk in range(1, 11)]
    assert [p.seq for p in placed] == list(range(1, 11))
    assert [p.capture_ts_us for p in placed] == [T0 + i * 20_000 for i in range(10)]
    assert t.stats.gaps == 0 and all(p.gap_ms == 0 for p in placed)


def test_lost_frames_are_a_gap_marked_by_the_seq_and_time_jump():
    t = timeline()
    for chunk in range(1, 6):
        t.place(chunk, (chunk - 1) * 20, 160)
    p = t.place(9, 160, 160)  # chunks 6-8 (60 ms) lost
    assert p.seq == 9 and p.capture_ts_us == T0 + 160_000 and p.gap_ms == pytest.approx(60)
    assert t.stats.gaps == 1 and t.stats.gap_ms == pytest.approx(60)


def test_a_repeated_chunk_and_an_overlapping_frame_are_dropped():
    t = timeline(check_frames=2)
    for chunk in (1, 2, 3):
        t.place(chunk, (chunk - 1) * 20, 160)
    with pytest.raises(BadInput) as dup:
        t.place(3, 40, 160)
    assert dup.value.kind == "duplicate" and not dup.value.fatal
    with pytest.raises(BadInput) as over:
        t.place(4, 50, 160)  # starts inside frame 3 (40-60 ms), after the format check
    assert over.value.kind == "overlap" and not over.value.fatal
    assert t.stats.dropped == 2 and t.stats.frames == 3


def test_an_oversize_or_empty_payload_is_dropped():
    t = timeline()
    with pytest.raises(BadInput) as big:
        t.place(1, 0, 8000 * 250 // 1000)
    assert big.value.kind == "oversize_frame"
    with pytest.raises(BadInput) as empty:
        t.place(1, 0, 0)
    assert empty.value.kind == "invalid_field"


@pytest.mark.parametrize("payload_len", [320, 80], ids=["16kHz-bytes-as-8kHz", "half-the-bytes"])
def test_bytes_that_do_not_match_the_announced_rate_are_refused_after_the_check_frames(payload_len):
    # 320: 16 kHz mu-law announced as 8 kHz (40 ms of bytes every 20 ms: the frames overlap, and
    # the check must see that before the overlap rule drops them); 80: 10 ms of bytes every 20 ms
    t = timeline(check_frames=4)
    accepted = 0
    with pytest.raises(BadInput) as err:
        for chunk in range(1, 10):
            t.place(chunk, (chunk - 1) * 20, payload_len)
            accepted += 1
    assert err.value.kind == "media_format" and err.value.fatal
    assert accepted == 4  # refused at the 4th pair, nothing dropped as overlap before that
    assert t.stats.dropped == 0


def test_one_jittered_pair_does_not_fail_the_format_check():
    t = timeline(check_frames=4)
    stamps = [0, 20, 45, 65, 85, 105]  # one 5 ms late frame: a 5 ms gap, not a format mismatch
    for chunk, ts in enumerate(stamps, start=1):
        t.place(chunk, ts, 160)
    assert t.stats.gaps == 1 and t.stats.frames == 6
