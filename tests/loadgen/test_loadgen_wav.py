"""Stereo WAV input: read as two legs; anything that would need conversion is refused clearly."""

from __future__ import annotations

import socket
import wave

import numpy as np
import pytest

from loadgen import synth
from lupita import cli


def write_raw_wav(path, *, channels=2, width=2, rate=8000, frames=800):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x01" * (frames * channels * width))
    return path


@pytest.mark.parametrize("rate", [8000, 16000])
def test_stereo_wav_round_trips_into_two_legs(tmp_path, rate):
    rng = np.random.default_rng(0)
    stereo = rng.integers(-32768, 32767, size=(rate // 2, 2), dtype=np.int16)
    synth.write_wav(tmp_path / "call.wav", stereo, rate)
    got_rate, got = synth.read_wav_legs(tmp_path / "call.wav")
    assert got_rate == rate
    np.testing.assert_array_equal(got, stereo)
    assert got[:, 0].tolist() == stereo[:, 0].tolist()  # left = Lupita stays column 0


def test_wav_at_an_unsupported_rate_is_refused_with_a_clear_error(tmp_path):
    path = write_raw_wav(tmp_path / "cd.wav", rate=44100)
    with pytest.raises(synth.WavFormatError) as exc:
        synth.read_wav_legs(path)
    msg = str(exc.value)
    assert "44100 Hz" in msg and "8000 or 16000" in msg and "does not resample" in msg and "sox" in msg


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 1}, "1 channel(s); expected 2"),
        ({"width": 1}, "8-bit samples; expected 16-bit PCM"),
        ({"frames": 0}, "no audio frames"),
    ],
)
def test_wav_with_wrong_layout_is_refused(tmp_path, kwargs, message):
    path = write_raw_wav(tmp_path / "bad.wav", **kwargs)
    with pytest.raises(synth.WavFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        synth.read_wav_legs(path)


def test_non_wav_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not a RIFF file at all")
    with pytest.raises(synth.WavFormatError, match="not a PCM WAV file"):
        synth.read_wav_legs(junk)
    with pytest.raises(synth.WavFormatError, match="no such file"):
        synth.read_wav_legs(tmp_path / "missing.wav")


def test_write_wav_refuses_mono_arrays_and_bad_rates(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        synth.write_wav(tmp_path / "x.wav", np.zeros(100, dtype=np.int16), 8000)
    with pytest.raises(ValueError, match="sample rate"):
        synth.write_wav(tmp_path / "x.wav", np.zeros((100, 2), dtype=np.int16), 22050)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def not_a_wav(path):
    path.write_bytes(b"ID3\x03\x00 an mp3, not a WAV")
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_raw_wav(p, channels=1), "1 channel(s); expected 2 (left = Lupita, right = person)"),
        (lambda p: write_raw_wav(p, rate=22050), "sample rate 22050 Hz is not supported (8000 or 16000 only"),
        (lambda p: write_raw_wav(p, width=1), "8-bit samples; expected 16-bit PCM"),
        (not_a_wav, "not a PCM WAV file"),
    ],
    ids=["mono", "22k05", "8bit", "not-a-wav"],
)
def test_lupita_call_with_a_bad_wav_exits_2_with_the_reason_before_any_call(tmp_path, capsys, make, message):
    path = make(tmp_path / "input.wav")
    # nothing listens on the target: exit 2 (not 1 = calls failed) shows no call was attempted
    code = cli.main(["call", "--wav", str(path), "--token", "t", "--target", f"127.0.0.1:{closed_port()}",
                     "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert f"error: {path}: " in err and message in err
    assert "sox" in err  # says how to convert it


def test_lupita_call_refuses_a_rate_that_differs_from_the_wav(tmp_path, capsys):
    synth.write_wav(tmp_path / "call.wav", np.zeros((800, 2), dtype=np.int16), 8000)
    code = cli.main(["call", "--wav", str(tmp_path / "call.wav"), "--rate", "16000", "--token", "t",
                     "--target", "127.0.0.1:9"])
    assert code == 2
    assert "is 8000 Hz but --rate 16000" in capsys.readouterr().err
