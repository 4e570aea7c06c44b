"""Re-chunking of one leg's 20 ms frames into >= chunk_ms Kafka records (pure, no Kafka).

A chunk holds contiguous frames only: the next frame must carry the next sequence number and
start where the previous one ended (within half a frame). A gap or a timestamp jump closes
the current chunk and starts a new one at that frame, so every AudioChunk is a run of audio
without holes and consumers place it by ``start_ts_us``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lupita.audio import BYTES_PER_SAMPLE
from lupita.v1 import events_pb2


@dataclass
class _Open:
    first_seq: int
    start_ts_us: int
    last_seq: int
    # capture time where the last frame ends, and that frame's duration
    end_ts_us: float
    last_frame_us: float
    samples: int = 0
    frames: int = 0
    payloads: list[bytes] = field(default_factory=list)


class LegChunker:
    """Builds AudioChunk records for one (call, leg); chunk_seq runs 0, 1, 2, ..."""

    def __init__(
        self, *, call_id: str, leg: int, sample_rate_hz: int, codec: int, chunk_ms: int
    ) -> None:
        self.call_id = call_id
        self.leg = leg
        self.sample_rate_hz = sample_rate_hz
        self.codec = codec
        self.width = BYTES_PER_SAMPLE[codec]
        self.chunk_samples = max(1, sample_rate_hz * chunk_ms // 1000)
        self.next_chunk_seq = 0
        self.frames_total = 0
        self._open: _Open | None = None

    @property
    def pending_frames(self) -> int:
        return self._open.frames if self._open else 0

    def add(self, seq: int, capture_ts_us: int, payload: bytes) -> list[events_pb2.AudioChunk]:
        """Add one (validated) frame; returns the chunks this closed (0, 1 or 2)."""
        samples = len(payload) // self.width
        frame_us = samples * 1_000_000 / self.sample_rate_hz
        closed: list[events_pb2.AudioChunk] = []
        cur = self._open
        if cur is not None and not (
            seq == cur.last_seq + 1 and abs(capture_ts_us - cur.end_ts_us) <= cur.last_frame_us / 2
        ):
            closed.append(self._close())
            cur = None
        if cur is None:
            cur = self._open = _Open(
                first_seq=seq, start_ts_us=capture_ts_us, last_seq=seq,
                end_ts_us=capture_ts_us, last_frame_us=frame_us,
            )
        cur.payloads.append(payload)
        cur.samples += samples
        cur.frames += 1
        cur.last_seq = seq
        # the expected start of the next frame follows this frame's own capture time, so
        # sub-microsecond rounding of frame lengths never accumulates
        cur.end_ts_us = capture_ts_us + frame_us
        cur.last_frame_us = frame_us
        self.frames_total += 1
        if cur.samples >= self.chunk_samples:
            closed.append(self._close())
        return closed

    def flush(self) -> events_pb2.AudioChunk | None:
        """Close the partial chunk, if any (end of call, linger timeout)."""
        return self._close() if self._open is not None else None

    def _close(self) -> events_pb2.AudioChunk:
        cur = self._open
        assert cur is not None
        self._open = None
        chunk = events_pb2.AudioChunk(
            call_id=self.call_id,
            leg=self.leg,
            chunk_seq=self.next_chunk_seq,
            first_frame_seq=cur.first_seq,
            last_frame_seq=cur.last_seq,
            start_ts_us=cur.start_ts_us,
            sample_rate_hz=self.sample_rate_hz,
            codec=self.codec,
            payload=b"".join(cur.payloads),
            frame_count=cur.frames,
        )
        self.next_chunk_seq += 1
        return chunk
