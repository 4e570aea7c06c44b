"""Audio codec helpers shared by the bridge, recorder and simulator (numpy, no Kafka)."""

from __future__ import annotations

import numpy as np

from .v1 import audio_pb2

SUPPORTED_RATES = (8000, 16000)
BYTES_PER_SAMPLE = {audio_pb2.CODEC_PCM16: 2, audio_pb2.CODEC_MULAW: 1}


def _mulaw_table() -> np.ndarray:
    # ITU-T G.711 mu-law expansion of all 256 code words to int16.
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


MULAW_TO_PCM16 = _mulaw_table()


def mulaw_decode(data: bytes) -> np.ndarray:
    return MULAW_TO_PCM16[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 mu-law compression of int16 samples."""
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def decode_pcm16(payload: bytes, codec: int) -> np.ndarray:
    """Payload in ``codec`` -> int16 samples."""
    if codec == audio_pb2.CODEC_PCM16:
        return np.frombuffer(payload, dtype="<i2")
    if codec == audio_pb2.CODEC_MULAW:
        return mulaw_decode(payload)
    raise ValueError(f"unsupported codec {codec}")


def samples_in(payload_len: int, codec: int) -> int:
    return payload_len // BYTES_PER_SAMPLE[codec]
