"""Slicing stereo audio into the frames a telephony adapter sends (seq, timestamps, payloads)."""

from __future__ import annotations

import numpy as np
import pytest

from lupita.audio import decode_pcm16, mulaw_decode, mulaw_encode
from lupita.v1 import audio_pb2
from loadgen.frames import Frame, codec_from_name, fit_duration, slice_frames

PCM16, MULAW = audio_pb2.CODEC_PCM16, audio_pb2.CODEC_MULAW
LUPITA, PERSON = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON


def ramp_stereo(n: int) -> np.ndarray:
    left = np.arange(n, dtype=np.int16)
    return np.stack([left, -left], axis=1)


def test_frames_interleave_both_legs_in_capture_order_with_per_leg_seq_and_offsets():
    frames = slice_frames(ramp_stereo(8000), 8000, PCM16, 20)  # 1 s
    assert len(frames) == 2 * 50
    assert [f.leg for f in frames[:4]] == [LUPITA, PERSON, LUPITA, PERSON]
    for leg in (LUPITA, PERSON):
        mine = [f for f in frames if f.leg == leg]
        assert [f.seq for f in mine] == list(range(1, 51))
        assert [f.offset_us for f in mine] == [i * 20_000 for i in range(50)]
    offsets = [f.offset_us for f in frames]
    assert offsets == sorted(offsets)


def test_payloads_are_the_samples_of_their_leg_byte_exact():
    stereo = ramp_stereo(1600)
    frames = slice_frames(stereo, 8000, PCM16, 20)
    assert all(len(f.payload) == 160 * 2 for f in frames)
    left = np.concatenate([decode_pcm16(f.payload, PCM16) for f in frames if f.leg == LUPITA])
    right = np.concatenate([decode_pcm16(f.payload, PCM16) for f in frames if f.leg == PERSON])
    np.testing.assert_array_equal(left, stereo[:, 0])
    np.testing.assert_array_equal(right, stereo[:, 1])


def test_mulaw_frames_carry_one_byte_per_sample_at_16k():
    stereo = ramp_stereo(16000 // 10) * 10
    frames = slice_frames(stereo, 16000, MULAW, 20)
    assert len(frames) == 2 * 5
    assert all(len(f.payload) == 320 for f in frames)
    left = b"".join(f.payload for f in frames if f.leg == LUPITA)
    assert left == mulaw_encode(stereo[:, 0])
    err = np.abs(mulaw_decode(left).astype(int) - stereo[:, 0])
    assert np.all(err <= np.abs(stereo[:, 0].astype(int)) / 16 + 8)  # G.711 step size


def test_last_partial_frame_is_padded_with_silence():
    stereo = ramp_stereo(160 * 3 + 40) + 1
    frames = slice_frames(stereo, 8000, PCM16, 20)
    last = [f for f in frames if f.leg == LUPITA][-1]
    assert last.seq == 4 and last.offset_us == 60_000
    samples = decode_pcm16(last.payload, PCM16)
    assert len(samples) == 160
    np.testing.assert_array_equal(samples[:40], stereo[480:, 0])
    assert not samples[40:].any()


def test_first_seq_and_capture_timestamps_follow_the_call_start():
    frames = slice_frames(ramp_stereo(480), 8000, PCM16, 20, first_seq=1000)
    started = 1_700_000_000_000_000
    assert [f.seq for f in frames if f.leg == PERSON] == [1000, 1001, 1002]
    assert [f.capture_ts_us(started) for f in frames if f.leg == LUPITA] == [
        started, started + 20_000, started + 40_000
    ]


def test_other_frame_durations_slice_accordingly():
    frames = slice_frames(ramp_stereo(16000), 16000, PCM16, 10)
    assert len(frames) == 200 and len(frames[0].payload) == 160 * 2
    assert frames[-1] == Frame(PERSON, 100, 990_000, frames[-1].payload)


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros(100, dtype=np.int16), 8000, PCM16, 20), "shape"),
        ((np.zeros((100, 3), dtype=np.int16), 8000, PCM16, 20), "shape"),
        ((np.zeros((100, 2), dtype=np.int16), 11025, PCM16, 20), "sample rate"),
        ((np.zeros((100, 2), dtype=np.int16), 8000, PCM16, 0), "frame_ms"),
        ((np.zeros((100, 2), dtype=np.int16), 8000, PCM16, 250), "frame_ms"),
        ((np.zeros((100, 2), dtype=np.int16), 8000, 99, 20), "codec"),
    ],
)
def test_bad_slicing_input_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        slice_frames(*args)


def test_first_seq_must_be_positive():
    with pytest.raises(ValueError, match="first_seq"):
        slice_frames(ramp_stereo(160), 8000, PCM16, 20, first_seq=0)


def test_codec_names():
    assert codec_from_name("pcm16") == PCM16 and codec_from_name("mulaw") == MULAW
    with pytest.raises(ValueError, match="unknown codec 'opus'"):
        codec_from_name("opus")


def test_fit_duration_loops_and_cuts():
    stereo = ramp_stereo(100)
    longer = fit_duration(stereo, 8000, 250 / 8000)
    assert len(longer) == 250
    np.testing.assert_array_equal(longer[100:200], stereo)
    assert len(fit_duration(stereo, 8000, 50 / 8000)) == 50
    with pytest.raises(ValueError, match="duration"):
        fit_duration(stereo, 8000, 0)
