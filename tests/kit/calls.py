"""Simulated calls, published exactly as the media bridge publishes them.

The Kafka records are made by the bridge's own functions (``check_start`` + ``started_event``,
``LegChunker``, ``ended_event``), so every stage is tested against what the bridge really
publishes. Two kinds of audio:

- :func:`simulate_call`: random samples per 20 ms frame, each leg with its own offset and an
  optional stretch of lost frames; the expected stereo signal is computed independently from the
  frames (sample offset = capture time since the call start), not with the recorder's muxer;
- :func:`dialogue` + :func:`make_call`: synthesised Spanish speech
  (``loadgen.synth``: espeak-ng + sox, telephone band), both legs from t = 0, with the true speech
  regions of each leg measured on the samples (first and last sample above -40 dBFS of each turn).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadgen import synth
from lupita.audio import mulaw_decode, mulaw_encode
from lupita.v1 import audio_pb2, events_pb2, media_bridge_pb2
from media_bridge.chunker import LegChunker
from media_bridge.publisher import ended_event, started_event
from media_bridge.settings import BridgeSettings
from media_bridge.validation import check_start

LUPITA, PERSON = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON
LEG_OF = {synth.LUPITA: LUPITA, synth.PERSON: PERSON}
SPEECH_FLOOR = 0.01 * 32768  # -40 dBFS: a sample above it belongs to speech
PHONE = "+5219515550100"  # synthetic (tests/kit/logscan.py lists it): never in a log

# A short check-in call: each turn is one phrase without inner pauses (commas and full stops
# make espeak-ng pause, which the VAD rightly splits), separated by the other leg's turn.
SCRIPT: tuple[synth.Turn, ...] = (
    synth.Turn(synth.LUPITA, "Buenos días doña Carmen", 0.6),
    synth.Turn(synth.PERSON, "Muy bien gracias Lupita", 0.6),
    synth.Turn(synth.LUPITA, "Ya se tomó la pastilla de la presión con el desayuno esta mañana", 0.6),
    synth.Turn(synth.PERSON, "Ay tengo mucho frío y quiero tomar café con leche", 0.8),
)
LEAD_IN_S = 0.4


def bridge_settings() -> BridgeSettings:
    """The bridge's settings with test-only keys (the pipeline stages never see the phone: it is
    only encrypted and hashed in the started event), so the pure tests need no stack."""
    key = base64.b64encode(bytes(range(32))).decode()
    return BridgeSettings(allow_unauthenticated=True, phone_hmac_key=key, phone_encryption_key=key,
                          instance_name="pipeline-test")


@dataclass
class BridgeCall:
    """A call's records as the bridge publishes them: started, chunks, ended."""

    call_id: str
    rate: int
    started_at_us: int
    started: events_pb2.CallLifecycle
    chunks: list[events_pb2.AudioChunk]
    ended: events_pb2.CallLifecycle

    def chunks_of(self, leg: int) -> list[events_pb2.AudioChunk]:
        return [c for c in self.chunks if c.leg == leg]

    def records(self, topics: Any, *, chunks: Iterable[events_pb2.AudioChunk] | None = None,
                started: bool = True, ended: bool = True) -> list[tuple[str, bytes, bytes]]:
        """(topic, key, value) in the bridge's order (``topics.lifecycle``, ``topics.chunks``)."""
        key = self.call_id.encode()
        out = []
        if started:
            out.append((topics.lifecycle, key, self.started.SerializeToString()))
        for c in self.chunks if chunks is None else chunks:
            out.append((topics.chunks, key, c.SerializeToString()))
        if ended:
            out.append((topics.lifecycle, key, self.ended.SerializeToString()))
        return out


@dataclass
class SimCall(BridgeCall):
    phone: str = PHONE
    consent: bool = True
    codec: int = audio_pb2.CODEC_PCM16
    expected: np.ndarray = None  # (frames, 2) int16: left = Lupita, right = person
    frames_sent: dict[int, int] = field(default_factory=dict)


@dataclass
class PipelineCall(BridgeCall):
    stereo: np.ndarray = None  # (n, 2) int16, left = Lupita, right = person
    truth: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # leg -> [(start s, end s)]


def _bridge_records(call_id: str, *, phone: str, consent: bool, rate: int, codec: int, t0: int,
                    settings: BridgeSettings, legs: dict[int, Iterator[tuple[int, int, bytes]]],
                    chunk_ms: int, ended_at_us: int):
    """started, chunks (leg by leg), ended for frames ``legs[leg] = (seq, capture_ts_us, payload)``."""
    start = media_bridge_pb2.CallStart(
        call_id=call_id, direction=audio_pb2.DIRECTION_OUTBOUND, sample_rate_hz=rate, codec=codec,
        recording_consent=consent, started_at_us=t0,
        caller=media_bridge_pb2.CallerMetadata(phone_number=phone, region="oaxaca", family_plan_id="plan-test",
                                               language="es-MX", consent_source="ivr_prompt_v2"),
    )
    started = started_event(check_start(start), settings, received_at_us=t0)
    chunks: list[events_pb2.AudioChunk] = []
    counts, frames = {}, {}
    for leg, leg_frames in legs.items():
        chunker = LegChunker(call_id=call_id, leg=leg, sample_rate_hz=rate, codec=codec, chunk_ms=chunk_ms)
        for seq, ts, payload in leg_frames:
            chunks.extend(chunker.add(seq, ts, payload))
        tail = chunker.flush()
        if tail is not None:
            chunks.append(tail)
        counts[leg], frames[leg] = chunker.next_chunk_seq, chunker.frames_total
    ended = ended_event(call_id, "hangup", ended_at_us=ended_at_us, chunks=counts, frames=frames)
    return started, chunks, ended, frames


def _now_ms_us() -> int:
    return (time.time_ns() // 1000 // 1000) * 1000  # whole milliseconds, in µs


def _payload(pcm: np.ndarray, codec: int) -> bytes:
    return mulaw_encode(pcm) if codec == audio_pb2.CODEC_MULAW else pcm.astype("<i2").tobytes()


# --- random audio ---------------------------------------------------------------------------------


def simulate_call(
    call_id: str,
    *,
    phone: str = PHONE,
    consent: bool = True,
    rate: int = 8000,
    codec: int = audio_pb2.CODEC_PCM16,
    lupita_ms: int = 1000,
    person_offset_ms: int = 200,
    person_ms: int = 800,
    person_gap_ms: tuple[int, int] | None = (300, 400),
    frame_ms: int = 20,
    chunk_ms: int = 100,
    seed: int = 0,
    settings: BridgeSettings | None = None,
) -> SimCall:
    """One call of random samples: Lupita talks from t=0, the person from ``person_offset_ms``
    with a stretch of lost frames (``person_gap_ms``, relative to the person's first frame).
    ``settings``: the bridge's (default: from the environment, i.e. the stack's keys)."""
    settings = settings or BridgeSettings()
    rng = np.random.default_rng(seed)
    t0 = _now_ms_us()
    frame_samples = rate * frame_ms // 1000
    spans = {LUPITA: (0, lupita_ms, None), PERSON: (person_offset_ms, person_ms, person_gap_ms)}
    total = max((off + ms) * rate // 1000 for off, ms, _ in spans.values())
    expected = np.zeros((total, 2), dtype=np.int16)

    def frames_of(channel: int, offset_ms: int, ms: int, gap) -> Iterator[tuple[int, int, bytes]]:
        for k in range(ms // frame_ms):
            rel_ms = k * frame_ms
            if gap is not None and gap[0] <= rel_ms < gap[1]:
                continue  # lost frames: sequence numbers and time jump
            pcm = rng.integers(-20000, 20000, frame_samples, dtype=np.int16)
            payload = _payload(pcm, codec)
            if codec == audio_pb2.CODEC_MULAW:
                pcm = mulaw_decode(payload)
            pos = (offset_ms + rel_ms) * rate // 1000
            expected[pos:pos + frame_samples, channel] = pcm
            yield k, t0 + (offset_ms + rel_ms) * 1000, payload

    legs = {leg: frames_of(channel, *span) for channel, (leg, span) in enumerate(spans.items())}
    started, chunks, ended, frames = _bridge_records(
        call_id, phone=phone, consent=consent, rate=rate, codec=codec, t0=t0, settings=settings, legs=legs,
        chunk_ms=chunk_ms, ended_at_us=t0 + total * 1_000_000 // rate)
    return SimCall(call_id, rate, t0, started, chunks, ended, phone=phone, consent=consent, codec=codec,
                   expected=expected, frames_sent=frames)


# --- synthesised speech ---------------------------------------------------------------------------


def dialogue(turns: Iterable[synth.Turn] = SCRIPT, rate: int = 8000, *, cache_dir=None,
             silent_person: bool = False, noise_dbfs: float | None = None) -> tuple[np.ndarray, dict]:
    """Stereo int16 audio of the turns (LEAD_IN_S of silence first) and each leg's true regions."""
    pieces = []
    pos = int(LEAD_IN_S * rate)
    truth: dict[int, list[tuple[float, float]]] = {LUPITA: [], PERSON: []}
    for turn in turns:
        speech = synth.synthesize_utterance(turn.text, rate, synth.DEFAULT_VOICES[turn.leg], cache_dir=cache_dir)
        loud = np.nonzero(np.abs(speech.astype(np.int32)) > SPEECH_FLOOR)[0]
        if not (silent_person and turn.leg == synth.PERSON):
            truth[LEG_OF[turn.leg]].append(((pos + loud[0]) / rate, (pos + loud[-1] + 1) / rate))
        pieces.append((turn.leg, pos, speech))
        pos += len(speech) + int(turn.pause_after_s * rate)
    stereo = np.zeros((pos, 2), dtype=np.int16)
    for leg, start, speech in pieces:
        if silent_person and leg == synth.PERSON:
            continue
        stereo[start:start + len(speech), synth.LEGS.index(leg)] = speech
    if noise_dbfs is not None:
        stereo = synth._add_noise(stereo, rate, noise_dbfs, seed=3)
    return stereo, truth


def make_call(call_id: str, stereo: np.ndarray, truth: dict, *, rate: int = 8000,
              codec: int = audio_pb2.CODEC_PCM16, started_at_us: int | None = None, frame_ms: int = 20,
              chunk_ms: int = 100, phone: str = PHONE) -> PipelineCall:
    """The bridge's records for a call carrying ``stereo`` (both legs from t = 0), with the
    test-only keys of :func:`bridge_settings`; chunks interleaved by capture time, as the bridge
    publishes both legs while the audio comes."""
    t0 = started_at_us or _now_ms_us()
    frame = rate * frame_ms // 1000

    def frames_of(column: int) -> Iterator[tuple[int, int, bytes]]:
        for k in range(len(stereo) // frame):
            yield k, t0 + k * frame_ms * 1000, _payload(stereo[k * frame:(k + 1) * frame, column], codec)

    started, chunks, ended, _ = _bridge_records(
        call_id, phone=phone, consent=True, rate=rate, codec=codec, t0=t0, settings=bridge_settings(),
        legs={LUPITA: frames_of(0), PERSON: frames_of(1)}, chunk_ms=chunk_ms,
        ended_at_us=t0 + len(stereo) * 1_000_000 // rate)
    chunks.sort(key=lambda c: (c.start_ts_us, c.leg))
    return PipelineCall(call_id, rate, t0, started, chunks, ended, stereo=stereo, truth=truth)

