"""Synthesised Spanish calls for the vad/transcriber tests, published as the media bridge does.

The audio comes from ``loadgen.synth`` (espeak-ng + sox, telephone band); the Kafka records are
made by the bridge's own functions (``check_start`` + ``started_event``, ``LegChunker``,
``ended_event``), exactly like ``sp_calls``. The true speech regions of each leg are measured on
the synthesised samples (first and last sample above -40 dBFS of each turn).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadgen import synth
from lupita.audio import mulaw_encode
from lupita.v1 import audio_pb2, events_pb2, media_bridge_pb2
from media_bridge.chunker import LegChunker
from media_bridge.publisher import ended_event, started_event
from media_bridge.settings import BridgeSettings
from media_bridge.validation import check_start

LUPITA, PERSON = audio_pb2.LEG_LUPITA, audio_pb2.LEG_PERSON
LEG_OF = {synth.LUPITA: LUPITA, synth.PERSON: PERSON}
SPEECH_FLOOR = 0.01 * 32768  # -40 dBFS: a sample above it belongs to speech

# A short check-in call: each turn is one phrase without inner pauses (commas and full stops
# make espeak-ng pause, which the VAD rightly splits), separated by the other leg's turn.
SCRIPT: tuple[synth.Turn, ...] = (
    synth.Turn(synth.LUPITA, "Buenos días doña Carmen", 0.6),
    synth.Turn(synth.PERSON, "Muy bien gracias Lupita", 0.6),
    synth.Turn(synth.LUPITA, "Ya se tomó la pastilla de la presión con el desayuno esta mañana", 0.6),
    synth.Turn(synth.PERSON, "Ay tengo mucho frío y quiero tomar café con leche", 0.8),
)
LEAD_IN_S = 0.4
# Words of each leg that Whisper base gets through the telephone band from these voices
# (normalised: lower case, no accents); the other words of the script are often misheard.
KEY_WORDS = {
    audio_pb2.LEG_LUPITA: ("buenos dias", "carmen", "presion", "manana"),
    audio_pb2.LEG_PERSON: ("muy bien", "tengo", "cafe", "leche"),
}


@dataclass
class PipelineCall:
    call_id: str
    rate: int
    started_at_us: int
    stereo: np.ndarray  # (n, 2) int16, left = Lupita, right = person
    truth: dict[int, list[tuple[float, float]]]  # leg -> [(start s, end s)] in call time
    started: events_pb2.CallLifecycle
    chunks: list[events_pb2.AudioChunk]
    ended: events_pb2.CallLifecycle

    def records(self, topics: Any, *, chunks: Iterable[events_pb2.AudioChunk] | None = None,
                started: bool = True, ended: bool = True) -> list[tuple[str, bytes, bytes]]:
        key = self.call_id.encode()
        out = []
        if started:
            out.append((topics.lifecycle, key, self.started.SerializeToString()))
        for c in self.chunks if chunks is None else chunks:
            out.append((topics.chunks, key, c.SerializeToString()))
        if ended:
            out.append((topics.lifecycle, key, self.ended.SerializeToString()))
        return out


def dialogue(turns: Iterable[synth.Turn] = SCRIPT, rate: int = 8000, *, cache_dir=None,
             silent_person: bool = False, noise_dbfs: float | None = None) -> tuple[np.ndarray, dict]:
    """Stereo int16 audio of the turns (LEAD_IN_S of silence first) and each leg's true regions."""
    turns = list(turns)
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
              chunk_ms: int = 100, phone: str = "+5219515550100") -> PipelineCall:
    """The bridge's records for a call carrying ``stereo`` (both legs from t = 0)."""
    settings = bridge_settings()
    t0 = started_at_us or (time.time_ns() // 1000 // 1000) * 1000
    start = media_bridge_pb2.CallStart(
        call_id=call_id, direction=audio_pb2.DIRECTION_OUTBOUND, sample_rate_hz=rate, codec=codec,
        recording_consent=True, started_at_us=t0,
        caller=media_bridge_pb2.CallerMetadata(phone_number=phone, region="oaxaca", family_plan_id="plan-test",
                                               language="es-MX", consent_source="ivr_prompt_v2"),
    )
    started = started_event(check_start(start), settings, received_at_us=t0)
    frame = rate * frame_ms // 1000
    chunks: list[events_pb2.AudioChunk] = []
    counts, frames = {}, {}
    for column, leg in enumerate((LUPITA, PERSON)):
        chunker = LegChunker(call_id=call_id, leg=leg, sample_rate_hz=rate, codec=codec, chunk_ms=chunk_ms)
        for k in range(len(stereo) // frame):
            pcm = stereo[k * frame:(k + 1) * frame, column]
            payload = mulaw_encode(pcm) if codec == audio_pb2.CODEC_MULAW else pcm.astype("<i2").tobytes()
            chunks.extend(chunker.add(k, t0 + k * frame_ms * 1000, payload))
        tail = chunker.flush()
        if tail is not None:
            chunks.append(tail)
        counts[leg], frames[leg] = chunker.next_chunk_seq, chunker.frames_total
    ended = ended_event(call_id, "hangup", ended_at_us=t0 + len(stereo) * 1_000_000 // rate,
                        chunks=counts, frames=frames)
    # the bridge publishes both legs as the audio comes: interleave by capture time
    chunks.sort(key=lambda c: (c.start_ts_us, c.leg))
    return PipelineCall(call_id, rate, t0, stereo, truth, started, chunks, ended)


def bridge_settings() -> BridgeSettings:
    """The bridge's settings with test-only keys (the pipeline stages never see the phone: it is
    only encrypted and hashed in the started event), so the pure tests need no stack."""
    key = base64.b64encode(bytes(range(32))).decode()
    return BridgeSettings(allow_unauthenticated=True, phone_hmac_key=key, phone_encryption_key=key,
                          instance_name="pipeline-test")


# --- reading topics -----------------------------------------------------------------------------


class TopicReader:
    """Reads one topic from the beginning (all partitions), keeping the records of given keys."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                      consumer_timeout_ms=200, client_id="pipeline-test-reader")
        parts = self.consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.records: list[Any] = []  # kafka-python ConsumerRecords, in arrival order per partition

    def poll(self) -> None:
        for batch in self.consumer.poll(timeout_ms=300, max_records=5000).values():
            self.records.extend(batch)

    def of(self, call_id: str) -> list[Any]:
        return [r for r in self.records if r.key == call_id.encode()]

    def close(self) -> None:
        self.consumer.close()


def segment_of(record: Any) -> events_pb2.SpeechSegment:
    seg = events_pb2.SpeechSegment()
    seg.ParseFromString(record.value)
    return seg


def segments_of(reader: TopicReader, call_id: str) -> list[events_pb2.SpeechSegment]:
    return [segment_of(r) for r in reader.of(call_id)]


def transcripts_of(reader: TopicReader, call_id: str) -> list[events_pb2.TranscriptEvent]:
    out = []
    for r in reader.of(call_id):
        ev = events_pb2.TranscriptEvent()
        ev.ParseFromString(r.value)
        out.append(ev)
    return out


def wait_until(what: str, reader: TopicReader, done: Callable[[], Any], *, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        reader.poll()
        value = done()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def own_topics(session_prefix: str, tag: str):
    """Worker settings on topics of a test module's own (a prefix inside the session's, created
    here), so the recorder tests' workers never see its records, nor its workers theirs; and the
    topic names it produces to."""
    import uuid
    from types import SimpleNamespace

    from lupita.topics import AUDIO_CHUNKS, CALL_LIFECYCLE, ensure_topics
    from stream_processor.settings import PipelineSettings

    settings = PipelineSettings(topic_prefix=f"{session_prefix}{tag}-{uuid.uuid4().hex[:6]}.")
    ensure_topics(settings)
    topics = SimpleNamespace(chunks=settings.topic(AUDIO_CHUNKS), lifecycle=settings.topic(CALL_LIFECYCLE))
    return settings, topics
