"""Stereo audio -> the per-leg frames a telephony adapter sends (plain code, no gRPC).

Both legs stream continuously (silence is audio too). Frames come out in capture-time order,
the Lupita leg first when both legs share a timestamp; each leg has its own sequence numbers
(``first_seq``, ``first_seq + 1``, ...) and ``offset_us`` is the capture time of the frame's
first sample relative to the start of the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lupita.audio import SUPPORTED_RATES, mulaw_encode
from lupita.v1 import audio_pb2

CODECS = {"pcm16": audio_pb2.CODEC_PCM16, "mulaw": audio_pb2.CODEC_MULAW}
# Column of the stereo array -> leg on the wire (left = Lupita, right = the person).
COLUMN_LEGS = (audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON)
MAX_FRAME_MS = 200  # the bridge's limit per frame


@dataclass(frozen=True, slots=True)
class Frame:
    leg: int  # audio_pb2.Leg
    seq: int
    offset_us: int  # capture time of the first sample, relative to the call start
    payload: bytes  # codec-encoded samples

    def capture_ts_us(self, started_at_us: int) -> int:
        return started_at_us + self.offset_us


def codec_from_name(name: str) -> int:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}: expected one of {sorted(CODECS)}") from None


def encode(samples: np.ndarray, codec: int) -> bytes:
    if codec == audio_pb2.CODEC_PCM16:
        return np.asarray(samples, dtype="<i2").tobytes()
    if codec == audio_pb2.CODEC_MULAW:
        return mulaw_encode(np.asarray(samples, dtype=np.int16))
    raise ValueError(f"unsupported codec {codec}")


def samples_per_frame(sample_rate: int, frame_ms: int) -> int:
    if sample_rate not in SUPPORTED_RATES:
        raise ValueError(f"sample rate must be one of {SUPPORTED_RATES}, got {sample_rate}")
    if not 1 <= frame_ms <= MAX_FRAME_MS:
        raise ValueError(f"frame_ms must be 1..{MAX_FRAME_MS}, got {frame_ms}")
    return sample_rate * frame_ms // 1000


def slice_frames(
    stereo: np.ndarray, sample_rate: int, codec: int, frame_ms: int = 20, *, first_seq: int = 1
) -> list[Frame]:
    """Cut an ``(n, 2)`` int16 array into frames of both legs, interleaved in capture-time order.

    A last partial frame is padded with silence to a whole frame, so every frame carries
    ``frame_ms`` of audio.
    """
    stereo = np.asarray(stereo)
    if stereo.ndim != 2 or stereo.shape[1] != 2:
        raise ValueError(f"expected stereo audio of shape (n, 2), got {stereo.shape}")
    if first_seq < 1:
        raise ValueError(f"first_seq must be >= 1, got {first_seq}")
    spf = samples_per_frame(sample_rate, frame_ms)
    n_frames = -(-len(stereo) // spf)
    padded = np.zeros((n_frames * spf, 2), dtype=np.int16)
    padded[: len(stereo)] = stereo
    frame_us = frame_ms * 1000
    frames: list[Frame] = []
    for i in range(n_frames):
        block = padded[i * spf : (i + 1) * spf]
        for column, leg in enumerate(COLUMN_LEGS):
            frames.append(Frame(leg, first_seq + i, i * frame_us, encode(block[:, column], codec)))
    return frames


def fit_duration(stereo: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    """Loop or cut the audio to exactly ``seconds`` (for load tests with calls of a set length)."""
    if seconds <= 0:
        raise ValueError(f"duration must be > 0, got {seconds}")
    n = int(round(seconds * sample_rate))
    reps = -(-n // len(stereo))
    return np.tile(stereo, (reps, 1))[:n]
