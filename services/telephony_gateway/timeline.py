"""One track's frames placed on the call's clock (pure: no socket, no bridge).

Every source gives each frame a position (Twilio: ``media.timestamp``, milliseconds since the
stream started, on one clock for both tracks). :class:`TrackTimeline` turns that into the bridge's
``capture_ts_us`` (``started_at_us`` + position) and a per-leg ``seq`` that strictly increases,
and decides what to do with each frame:

- a frame that starts later than where the previous one ended opens a **gap**: counted (and how
  long), and marked for the bridge by the jump in ``seq`` and ``capture_ts_us`` (the recorder
  fills it with silence, ``media_bridge.proto``: "gaps mean frames lost upstream");
- a frame whose chunk number was seen already is a ``duplicate``; one that starts inside the
  previous frame is an ``overlap``; one longer than ``max_frame_ms`` is ``oversize_frame``: each
  dropped and counted;
- the **format check**: over the first ``check_frames`` pairs of consecutive frames, the payload
  length must match the timestamp step (an 8 kHz mu-law frame of 20 ms is 160 bytes and the
  next frame starts 20 ms later). When most pairs disagree, the bytes are not what the stream
  announced (another rate or codec): :class:`~telephony_gateway.errors.BadInput` ``media_format``,
  fatal for the call.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadInput


@dataclass(frozen=True, slots=True)
class Placed:
    seq: int
    capture_ts_us: int
    gap_ms: float  # silence before this frame (0 when contiguous)


@dataclass
class TrackStats:
    frames: int = 0
    gaps: int = 0
    gap_ms: float = 0.0
    dropped: int = 0


class TrackTimeline:
    def __init__(self, *, started_at_us: int, sample_rate: int, bytes_per_sample: int, max_frame_ms: int,
                 check_frames: int, tolerance_ms: float = 2.0, name: str = "") -> None:
        self.started_at_us = started_at_us
        self.sample_rate = sample_rate
        self.bytes_per_sample = bytes_per_sample
        self.max_frame_ms = max_frame_ms
        self.check_frames = check_frames
        self.tolerance_ms = tolerance_ms
        self.name = name
        self.stats = TrackStats()
        self._first_chunk: int | None = None
        self._last_chunk: int | None = None
        self._end_ms: float | None = None  # where the last accepted frame ends
        self._last_ms: float | None = None  # the last accepted frame's duration
        self._checked = 0
        self._mismatched = 0

    def duration_ms(self, payload_len: int) -> float:
        return payload_len / self.bytes_per_sample * 1000.0 / self.sample_rate

    def place(self, chunk: int, timestamp_ms: int, payload_len: int) -> Placed:
        """Where the frame goes, or :class:`BadInput` (dropped; ``media_format`` is fatal)."""
        dur = self.duration_ms(payload_len)
        if payload_len % self.bytes_per_sample or payload_len == 0:
            self.stats.dropped += 1
            raise BadInput("invalid_field", f"{self.name} frame {chunk}: payload of {payload_len} bytes is not whole samples")
        if dur > self.max_frame_ms:
            self.stats.dropped += 1
            raise BadInput("oversize_frame", f"{self.name} frame {chunk}: {dur:.0f} ms is longer than {self.max_frame_ms} ms")
        if self._last_chunk is not None and chunk <= self._last_chunk:
            self.stats.dropped += 1
            raise BadInput("duplicate", f"{self.name} chunk {chunk} is not after chunk {self._last_chunk}")
        gap_ms = 0.0
        if self._end_ms is not None:
            delta = timestamp_ms - self._end_ms
            consecutive = chunk == self._last_chunk + 1
            checking = consecutive and self._checked < self.check_frames
            mismatch = False
            if checking:  # the format check comes before the overlap rule: wrong-rate frames overlap
                self._checked += 1
                step = timestamp_ms - (self._end_ms - self._last_ms)
                mismatch = abs(step - self._last_ms) > self.tolerance_ms
                self._mismatched += mismatch
                if self._checked == self.check_frames and 2 * self._mismatched > self._checked:
                    raise BadInput(
                        "media_format",
                        f"{self.name}: in {self._mismatched} of the first {self._checked} frame pairs the payload "
                        f"length ({self._last_ms:.1f} ms at {self.sample_rate} Hz) does not match the timestamp step "
                        f"({step:.0f} ms): the audio is not in the announced format",
                        fatal=True,
                    )
            if delta < -self.tolerance_ms and not mismatch:
                self.stats.dropped += 1
                raise BadInput("overlap", f"{self.name} chunk {chunk} starts {-delta:.0f} ms before the previous frame ends")
            if delta > self.tolerance_ms or not consecutive:
                gap_ms = max(delta, 0.0)
                self.stats.gaps += 1
                self.stats.gap_ms += gap_ms
        if self._first_chunk is None:
            self._first_chunk = chunk
        self._last_chunk = chunk
        self._end_ms = timestamp_ms + dur
        self._last_ms = dur
        self.stats.frames += 1
        return Placed(
            seq=chunk - self._first_chunk + 1,
            capture_ts_us=self.started_at_us + timestamp_ms * 1000,
            gap_ms=gap_ms,
        )
